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


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_xla_cpu_flags",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("--width", type=int, default=384, help="DiT width (384 = DiT-S, 768 = DiT-B)")
  ap.add_argument("--tokens", type=int, default=8192, help="rows = batch x tokens (32 x 256)")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--out", default=os.path.join(RESULTS, "xla_cpu_flags.md"))
  ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--_torch_child", action="store_true", help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
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
