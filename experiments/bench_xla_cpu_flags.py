"""Which XLA:CPU library settings make this CPU's DiT matmuls fastest (issue #18: adaflow vs torch bf16).

    flock /tmp/adaflow-bench.lock python -m experiments.bench_xla_cpu_flags [--width 384] [--tokens 8192]

XLA:CPU hands dots to one of several libraries (its own Eigen/tiled emitters, XNNPACK, YNNPACK,
oneDNN where built in), chosen by `XLA_FLAGS`. Each variant below runs in a fresh process (XLA reads
its flags once) on the DiT block's three GEMM shapes at `--tokens` rows: fp32, bf16 in / fp32 out
(adaflow's mixed-precision matmul), bf16 in / bf16 out. A variant whose flags XLA rejects is reported
as such. Median of `--reps` calls after a warm-up. A last row times the same shapes with torch's
CPU matmul (oneDNN; AMX tiles where the CPU has them), the kernels torch bf16 autocast runs, when
torch is installed (it has no bf16-in / fp32-out matmul: that cell stays empty). Writes
experiments/results/xla_cpu_flags.md.

    python -m experiments.bench_xla_cpu_flags --model S [--batch 32] [--rounds 2] [--dtype auto]

times the whole DiT-S/2 (or B, or Q: the quick start's width and depth) forward and AdamW train
step instead, built as bench_vs_torch builds it, for the end-to-end variants (XLA's default, and
YNNPACK's dot and reduce fusions off: the setting adaflow applies on CPUs without native bf16,
`adaflow.parallel.precision.xla_cpu_defaults`), each in a fresh process, the variants in turn for
`--rounds` rounds so that the machine's drift does not favour one.

    python -m experiments.bench_xla_cpu_flags --cli quickstart [--cli_steps 400] [--rounds 2]

does the same with `adaflow train --config configs/<NAME>.py` for `--cli_steps` steps (input
pipeline, logging and checkpoint included; no final samples or evaluation), reading the run's logged
images/s. The CLI adds adaflow's setting to XLA_FLAGS unless one is there, so XLA's default is
written out for it ('+individual_dot': the default list, plus a type already in it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from experiments.common import RESULTS, ROOT, machine_line, time_calls, utc_now, write_report

VARIANTS = {
    "XLA:CPU default": "",
    "YNNPACK fusions off": "--xla_cpu_experimental_ynn_fusion_type=",
    "XNNPACK off": "--xla_cpu_use_xnnpack=false",
    "YNNPACK and XNNPACK off": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=false",
    "oneDNN on": "--xla_cpu_use_onednn=true",
    "oneDNN custom calls on": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "oneDNN dot fusions": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "YNNPACK dot fusions": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "XNNPACK dot fusions": "--xla_cpu_experimental_xnn_fusion_type=dot",
}
TORCH_ROW = "torch (oneDNN), for reference"
# End to end: XLA's own default (YNNPACK takes each dot and reduction) against those two fusion
# types removed from it (convolutions stay with YNNPACK; the DiT has none).
END_TO_END_VARIANTS = {
    "XLA:CPU default": "",
    "YNNPACK dot and reduce fusions off": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot,-reduce",
}


def gemm_shapes(width: int, tokens: int) -> dict:
  """{name: (m, k, n)} of a DiT block's three GEMMs at `tokens` rows."""
  return {"qkv": (tokens, width, 3 * width), "mlp up": (tokens, width, 4 * width),
          "mlp down": (tokens, 4 * width, width)}


def torch_child(width: int, tokens: int, reps: int) -> dict:
  """GFLOP/s of torch.matmul on the same shapes: fp32 and bf16 (bf16 out, fp32 accumulation)."""
  import torch
  torch.manual_seed(0)
  out = {}
  for sname, (m, k, n) in gemm_shapes(width, tokens).items():
    for pname, dtype in (("fp32", torch.float32), ("bf16 in, bf16 out", torch.bfloat16)):
      a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
      torch.matmul(a, b)
      out[f"{sname}|{pname}"] = 2.0 * m * k * n / time_calls(lambda: torch.matmul(a, b), reps) / 1e9
  return out


def child(width: int, tokens: int, reps: int) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  shapes = gemm_shapes(width, tokens)
  precisions = {"fp32": (jnp.float32, jnp.float32), "bf16 in, fp32 out": (jnp.bfloat16, jnp.float32),
                "bf16 in, bf16 out": (jnp.bfloat16, jnp.bfloat16)}
  out = {}
  rng = np.random.default_rng(0)
  for sname, (m, k, n) in shapes.items():
    for pname, (cin, cout) in precisions.items():
      a = jnp.asarray(rng.standard_normal((m, k)), cin)
      b = jnp.asarray(rng.standard_normal((k, n)), cin)
      f = jax.jit(lambda x, y, cout=cout: jnp.dot(x, y, preferred_element_type=cout))
      f(a, b).block_until_ready()
      sec = time_calls(lambda: f(a, b).block_until_ready(), reps)
      out[f"{sname}|{pname}"] = 2.0 * m * k * n / sec / 1e9
  return out


def model_child(size: str, batch: int, reps: int, dtype: str) -> dict:
  """Seconds to build + compile, and images/s of the forward and the train step of DiT-`size`/2."""
  import time
  from experiments.bench_vs_torch import AdaflowContender
  t0 = time.perf_counter()
  c = AdaflowContender(size, batch, dtype)            # compiles both programs and runs each once
  setup = time.perf_counter() - t0
  fwd = time_calls(c.run_forward, reps)
  train = time_calls(c.run_train, reps)
  mem = c.memory()
  return {"setup_s": setup, "forward": batch / fwd, "train": batch / train,
          "train_mib": mem["train"]["total"] / 2**20, "forward_mib": mem["forward"]["total"] / 2**20}


CLI_XLA_DEFAULT = "--xla_cpu_experimental_ynn_fusion_type=+individual_dot"


def cli_child(config: str, steps: int, env: dict) -> dict:
  """`adaflow train` of configs/<config>.py for `steps` steps in a fresh process -> the median logged
  images/s after the first logging interval (which holds the compile), and the wall seconds."""
  import statistics
  import tempfile
  import time
  from adaflow.train.metrics_log import read_metrics
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "adaflow.cli", "train", f"--config={ROOT}/configs/{config}.py",
                        f"--workdir={tmp}/w", f"--config.train.steps={steps}", f"--config.train.ckpt_every={steps}",
                        "--config.train.final_samples=False", "--config.eval.at_end=False"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
      raise SystemExit(f"adaflow train failed: {(r.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
    rates = [row["images_per_second"] for row in read_metrics(f"{tmp}/w")[1:]]
  return {"train": statistics.median(rates), "wall_s": wall, "intervals": len(rates)}


def model_name(size: str) -> str:
  return "a width-128, depth-4 DiT (the quick start's), patch 2" if size == "Q" else f"DiT-{size}/2"


def end_to_end(a) -> None:
  """Runs `model_child` (`cli_child` with --cli) per END_TO_END_VARIANTS in fresh processes,
  `--rounds` times in turn; writes the per-round rows and the ratio of medians to the first variant."""
  import statistics
  machine, date = machine_line(), utc_now()
  names = list(END_TO_END_VARIANTS)
  rows = []
  for rnd in range(a.rounds):
    for name in (names if rnd % 2 == 0 else names[::-1]):
      flags = END_TO_END_VARIANTS[name] or (CLI_XLA_DEFAULT if a.cli else "")
      env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
      load = os.getloadavg()[0]
      if a.cli:
        res = dict(cli_child(a.cli, a.cli_steps, env), name=name, round=rnd + 1, load=load, flags=flags)
        rows.append(res)
        print(f"round {rnd + 1} {name}: train {res['train']:.1f} img/s (logged), wall {res['wall_s']:.0f} s", flush=True)
        continue
      r = subprocess.run([sys.executable, "-m", "experiments.bench_xla_cpu_flags", "--_model_child", "--model", a.model,
                          "--batch", str(a.batch), "--reps", str(a.reps), "--dtype", a.dtype],
                         capture_output=True, text=True, env=env, cwd=ROOT)
      line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
      if r.returncode != 0 or line is None:
        raise SystemExit(f"{name}: failed: {(r.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
      res = dict(json.loads(line[len("RESULT "):]), name=name, round=rnd + 1, load=load, flags=flags)
      rows.append(res)
      print(f"round {rnd + 1} {name}: setup {res['setup_s']:.0f} s, forward {res['forward']:.2f} img/s, "
            f"train {res['train']:.2f} img/s", flush=True)
  if a.cli:
    cli_report(a, rows, names, machine, date)
    return
  med = {n: {k: statistics.median(r[k] for r in rows if r["name"] == n) for k in ("setup_s", "forward", "train")}
         for n in names}
  ref = med[names[0]]
  lines = [f"# XLA:CPU settings end to end: {model_name(a.model)} forward and train step per XLA_FLAGS variant", "",
           f"- {machine}; {date}.",
           f"- Command: `python -m experiments.bench_xla_cpu_flags --model {a.model} --batch {a.batch} --reps {a.reps} "
           f"--rounds {a.rounds} --dtype {a.dtype}`; each variant in a fresh process (XLA reads its flags once), "
           "the variants in turn (reversed every other round); median of the calls after the compile's warm-up call; "
           f"32x32x3 inputs, patch 2, batch {a.batch}, AdamW, `model.dtype={a.dtype}`.", "",
           "| round | variant | XLA_FLAGS | load (1 min) | build + compile s | forward img/s | train img/s | "
           "train XLA buffers MiB |", "|---:|---|---|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r['round']} | {r['name']} | `{r['flags'] or '(none)'}` | {r['load']:.1f} | "
                 f"{r['setup_s']:.0f} | {r['forward']:.2f} | {r['train']:.2f} | {r['train_mib']:.0f} |")
  lines += ["", f"Medians over rounds, and their ratio to `{names[0]}` (above 1: faster):", "",
            "| variant | build + compile s | forward img/s | train img/s | forward ratio | train ratio |",
            "|---|---:|---:|---:|---:|---:|"]
  for n in names:
    m = med[n]
    lines.append(f"| {n} | {m['setup_s']:.0f} | {m['forward']:.2f} | {m['train']:.2f} | "
                 f"{m['forward'] / ref['forward']:.2f}x | {m['train'] / ref['train']:.2f}x |")
  write_report("\n".join(lines) + "\n", a.out)


def cli_report(a, rows, names, machine, date) -> None:
  import statistics
  med = {n: statistics.median(r["train"] for r in rows if r["name"] == n) for n in names}
  lines = [f"# XLA:CPU settings end to end: `adaflow train --config configs/{a.cli}.py`, images/s per XLA_FLAGS "
           "variant", "", f"- {machine}; {date}.",
           f"- Command: `python -m experiments.bench_xla_cpu_flags --cli {a.cli} --cli_steps {a.cli_steps} "
           f"--rounds {a.rounds}`; each run `adaflow train --config configs/{a.cli}.py --config.train.steps="
           f"{a.cli_steps}` (no final samples or evaluation) in a fresh process, the variants in turn (reversed every "
           "other round); images/s: the median of the run's logged intervals after the first (which holds the compile).",
           "", "| round | variant | XLA_FLAGS | load (1 min) | train img/s (logged) | wall s |", "|---:|---|---|---:|---:|---:|"]
  lines += [f"| {r['round']} | {r['name']} | `{r['flags']}` | {r['load']:.1f} | {r['train']:.1f} | {r['wall_s']:.0f} |"
            for r in rows]
  lines += ["", f"Medians over rounds, and their ratio to `{names[0]}`:", "",
            "| variant | train img/s | ratio |", "|---|---:|---:|"]
  lines += [f"| {n} | {med[n]:.1f} | {med[n] / med[names[0]]:.2f}x |" for n in names]
  write_report("\n".join(lines) + "\n", a.out)


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_xla_cpu_flags",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("--width", type=int, default=384, help="DiT width (384 = DiT-S, 768 = DiT-B)")
  ap.add_argument("--tokens", type=int, default=8192, help="rows = batch x tokens (32 x 256)")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--out", default=None, help="default: results/xla_cpu_flags.md (GEMMs) or "
                                                   "results/xla_cpu_end_to_end.md (--model)")
  ap.add_argument("--model", choices=("S", "B", "Q"), default=None,
                  help="time the whole DiT-S/2 or DiT-B/2 (or Q: width 128, depth 4, the quick start's) forward "
                       "and train step instead of the GEMMs")
  ap.add_argument("--cli", default=None, help="time `adaflow train --config configs/CLI.py` instead (e.g. quickstart)")
  ap.add_argument("--cli_steps", type=int, default=400, help="--cli only: train steps per run")
  ap.add_argument("--batch", type=int, default=32, help="--model only")
  ap.add_argument("--rounds", type=int, default=2, help="--model / --cli: variants in turn, this many times")
  ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"), help="--model only")
  ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--_model_child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--_torch_child", action="store_true", help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.model and a.cli:
    ap.error("--model and --cli measure different programs: give one")
  if a.cli and not os.path.exists(os.path.join(ROOT, "configs", f"{a.cli}.py")):
    ap.error(f"--cli {a.cli}: configs/{a.cli}.py does not exist (e.g. --cli quickstart)")
  a.out = a.out or os.path.join(RESULTS, "xla_cpu_end_to_end.md" if a.model or a.cli else "xla_cpu_flags.md")
  if a._model_child:
    print("RESULT " + json.dumps(model_child(a.model, a.batch, a.reps, a.dtype)))
    return
  if a.model or a.cli:
    end_to_end(a)
    return
  if a._child or a._torch_child:
    print("RESULT " + json.dumps((torch_child if a._torch_child else child)(a.width, a.tokens, a.reps)))
    return
  machine, date = machine_line(), utc_now()
  results, errors = {}, {}
  for name, flags in list(VARIANTS.items()) + [(TORCH_ROW, None)]:
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + (flags or "")).strip())
    kind = "--_torch_child" if flags is None else "--_child"
    r = subprocess.run([sys.executable, "-m", "experiments.bench_xla_cpu_flags", kind, "--width", str(a.width),
                        "--tokens", str(a.tokens), "--reps", str(a.reps)], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
      err = (r.stderr.strip().splitlines() or ["no output"])[-1]
      errors[name] = err[:200]
      print(f"{name}: failed: {errors[name]}", flush=True)
      continue
    results[name] = json.loads(line[len("RESULT "):])
    print(name, {k: round(v) for k, v in results[name].items()}, flush=True)
  keys = next((res.keys() for name, res in results.items() if name != TORCH_ROW), [])
  lines = ["# XLA:CPU matmul libraries on this CPU: GFLOP/s per XLA_FLAGS variant", "",
           f"- {machine}; {date}.",
           f"- Command: `python -m experiments.bench_xla_cpu_flags --width {a.width} --tokens {a.tokens} "
           f"--reps {a.reps}`; "
           "each variant in a fresh process; median of the calls after a warm-up.", "",
           "| variant | XLA_FLAGS | " + " | ".join(k.replace("|", ", ") for k in keys) + " | mean bf16 in, fp32 out |",
           "|---|---|" + "---:|" * (len(keys) + 1)]
  for name, res in results.items():
    bf = [v for k, v in res.items() if k.endswith("bf16 in, fp32 out")]
    flags = "(torch.matmul, not XLA)" if name == TORCH_ROW else f"`{VARIANTS[name] or '(none)'}`"
    mean = f"{sum(bf) / len(bf):.0f}" if bf else ""
    lines.append(f"| {name} | {flags} | " + " | ".join(f"{res[k]:.0f}" if k in res else "" for k in keys)
                 + f" | {mean} |")
  for name, err in errors.items():
    lines.append(f"| {name} | `{VARIANTS.get(name, '')}` | rejected or failed: {err} |" + " |" * len(keys))
  write_report("\n".join(lines) + "\n", a.out)


if __name__ == "__main__":
  main()
