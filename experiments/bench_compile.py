"""Compile time of one DiT train step with the blocks unrolled vs `model.scan_blocks` (one scanned body),
and (`--methods`) of each method's train step and sampler against dense's on the crops testbed.

    python -m experiments.bench_compile [--size XL] [--batch 32] [--timeout 600]
    python -m experiments.bench_compile --methods [--steps 16] [--num 40]

DiT-<size>/2 on 32x32x4 latents (256 tokens, the ImageNet-256 latent shape), bf16 matmul inputs,
fp32 params, MSE + AdamW, params and optimizer state donated. Parameters are abstract
(`jax.eval_shape`), so nothing is initialised or run: the time is tracing + lowering to StableHLO
(`lower`) and XLA compilation (`compile`). Each setting runs in a fresh subprocess (no in-memory
or persistent compilation cache shared between them). Writes experiments/results/compile.md.

`--methods`: the frontier's arms (configs/frontier_crops32.py: dense, PPFlow-2, DiffCR routing,
the composed model with PPFlow + routing + four pruned timestep groups) built through the method
table exactly as `adaflow train` builds them, with abstract state: the train step (one batch of
`train.batch_size`) and the sampler (`--num` images, Heun `--steps`, the CLI's generate path),
each with `model.scan_blocks` on (the default) and off (the per-layer loop every routed model
used before routing scanned its layers). Writes experiments/results/compile_methods.md.
`--methods --ref REV`: the train steps (scanned) with the code of git revision REV against this
checkout, in alternating rounds (experiments/results/compile_vs_ref.md).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def child(size: str, batch: int, scan: bool, image: int = 32, channels: int = 4) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax
  from adaflow.models.dit import DIT_SIZES, DiT
  depth, hidden, heads = DIT_SIZES[size]
  model = DiT(image_size=(image, image), in_channels=channels, patch_size=2, hidden_size=hidden, depth=depth,
              num_heads=heads, num_classes=1000, dtype=jnp.bfloat16, scan_blocks=scan)
  x = jax.ShapeDtypeStruct((batch, image, image, channels), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  params = nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, y))
  tx = optax.adamw(1e-4)
  opt = jax.eval_shape(tx.init, params)

  def step(p, o, xb, tb, yb):
    g = jax.grad(lambda q: jnp.mean(jnp.square(model.apply(q, xb, tb, yb) - xb)))(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

  t0, c0 = time.perf_counter(), cpu_s()
  lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt, x, t, y)
  t1 = time.perf_counter()
  lowered.compile()
  t2, c2 = time.perf_counter(), cpu_s()
  n = sum(int(v.size) for v in jax.tree_util.tree_leaves(params))
  return {"size": size, "scan": scan, "lower_s": t1 - t0, "compile_s": t2 - t1, "cpu_s": c2 - c0, "params_m": n / 1e6,
          "depth": depth}


# The composed arm's pruned block structure, (heads, mlp channels) per block and timestep group,
# as the frontier run's train-then-prune search chose it (2026-12-03, /work/testbed/frontier):
# pruned groups have uneven blocks, which is what a composed model compiles in practice.
COMPOSED_GROUP_BLOCKS = (((4, 480), (1, 32), (4, 416), (0, 384)), ((4, 480), (2, 224), (4, 416), (2, 384)),
                         ((4, 480), (4, 416), (4, 416), (3, 384)), ((4, 512), (4, 512), (4, 512), (4, 512)))
COMPOSED_GROUP_EDGES = (0.0, 0.2402530536055565, 0.4999999850988388, 0.7597469389438629, 1.0)
METHOD_ARMS = ("dense", "ppflow", "routed", "composed")
# Learned keep ratios [layer][region] of a trained 4-layer, 4-region DiffCR run (experiments/results/
# routing.md, "learned-0.5", 2026-12-02): the sampler specialized to them compiles the 5 bins they
# snap to (1.0, 0.9, 0.8, 0.5, 0.3) instead of all 8. The composed arm uses it for every group.
TRAINED_RATIOS = ((0.957, 0.975, 0.980, 0.981), (0.538, 0.753, 0.875, 0.929),
                  (0.977, 0.982, 0.979, 0.967), (0.104, 0.529, 0.539, 0.299))


def method_config(arm: str, scan: bool):
  """The frontier config of `arm` (see the module docstring), `model.scan_blocks = scan`."""
  from experiments.common import load_config
  c = load_config("frontier_crops32")
  c.model.scan_blocks = scan
  stages = ((0.5, (4, 8)), (1.0, (4, 4)))                 # the frontier's PPFlow-2 schedule
  if arm == "dense":
    c.objective = "flow_matching"
  elif arm == "ppflow":
    c.objective, c.model.stages = "ppflow", stages
  elif arm == "routed":
    c.objective = "routed_flow_matching"
  else:
    c.objective = "composed"
    c.compose.ppflow, c.compose.routing, c.compose.grouped = True, True, True
    c.compose.stages = stages
    c.compose.group_blocks = COMPOSED_GROUP_BLOCKS
    c.compose.group_edges = COMPOSED_GROUP_EDGES
  return c


def with_trained_ratios(params, spec):
  """The abstract `params` with every `rho` leaf set to TRAINED_RATIOS (raw param = ratio /
  routing.ratio_lr_scale), which is all `ComposedGenerator.specialize` reads."""
  import jax
  import numpy as np

  def leaf(path, x):
    if getattr(path[-1], "key", None) == "rho":
      return np.asarray(TRAINED_RATIOS, np.float32) / spec.ratio_lr_scale
    return x
  return jax.tree_util.tree_map_with_path(leaf, params)


def method_child(arm: str, scan: bool, what: str, steps: int, num: int, trained: bool = False) -> dict:
  """Lowers and compiles `arm`'s train step or sampler with abstract arguments (`trained`: the
  sampler specialized to TRAINED_RATIOS, as `generate_images` specializes to a run's ratios)."""
  import tempfile
  import jax
  import jax.numpy as jnp
  from adaflow.flow.driver import make_generate_fn
  from adaflow.train.loop import Trainer

  def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

  config = method_config(arm, scan)
  with tempfile.TemporaryDirectory() as work:
    tr = Trainer(config, work, log=lambda m: None)
  h, w, ch = tr.info.image_shape
  if what == "train":
    b = config.train.batch_size
    batch = {"image": jax.ShapeDtypeStruct((b, h, w, ch), jnp.float32), "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
    fn, args = tr.jitted_step(), (tr.abstract_state, batch)
  else:
    gen = tr.generator()
    if trained:
      gen = gen.specialize(with_trained_ratios(tr.abstract_state.ema_params, gen.spec.routing))
    fn = make_generate_fn(gen, tr.mesh, steps=steps, method="heun", cfg_scale=float(config.sample.cfg_scale))
    args = (tr.abstract_state.ema_params, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((num,), jnp.int32))
  t0, c0 = time.perf_counter(), cpu_s()
  lowered = fn.lower(*args)
  t1 = time.perf_counter()
  lowered.compile()
  t2, c2 = time.perf_counter(), cpu_s()
  return {"arm": arm, "scan": scan, "what": what, "trained": trained, "lower_s": t1 - t0, "compile_s": t2 - t1, "cpu_s": c2 - c0}


def method_rows(a, code_root: str, programs=("train", "sample"), layers=(True, False, "trained")):
  """{(arm, layers, program): measurement} with the code in `code_root`, each row in a fresh process."""
  rows = {}
  for what in programs:
    for arm in METHOD_ARMS:
      for scan in ((True,) if arm in ("dense", "ppflow") else layers):
        if scan == "trained" and what == "train":
          continue
        spec = f"{arm}:1:{what}:1" if scan == "trained" else f"{arm}:{int(scan)}:{what}:0"
        cmd = [sys.executable, "-m", "experiments.bench_compile", "--_method", spec,
               "--steps", str(a.steps), "--num", str(a.num)]
        t0 = time.perf_counter()
        try:
          r = subprocess.run(cmd, capture_output=True, text=True, cwd=code_root, timeout=a.timeout)
        except subprocess.TimeoutExpired:
          rows[arm, scan, what] = {"timeout": a.timeout}
          print(arm, scan, what, "timed out", flush=True)
          continue
        if r.returncode != 0:
          raise SystemExit(f"{arm} {what}: the compile subprocess failed:\n{r.stderr[-3000:]}")
        m = json.loads(r.stdout.strip().splitlines()[-1])
        m["wall_s"] = time.perf_counter() - t0
        rows[arm, scan, what] = m
        print(code_root, arm, scan, what, m, flush=True)
  return rows


def run_against_ref(a) -> None:
  """`--ref REV`: the train steps (scanned layers) with the code of REV and of this checkout, in
  `--rounds` rounds of alternating order, so that both see the same machine."""
  import tempfile
  from experiments.common import RESULTS, ROOT, export_revision, git, machine_line, utc_now
  out = a.out or os.path.join(RESULTS, "compile_vs_ref.md")
  ref_name = git("rev-parse", "--short", a.ref)
  dirty = " + uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
  head_name = git("rev-parse", "--short", "HEAD") + dirty
  header, started = machine_line(), utc_now()
  runs = {"ref": [], "head": []}
  with tempfile.TemporaryDirectory(prefix="adaflow-compile-ref-") as ref_root:
    export_revision(a.ref, ref_root)
    for k in range(a.rounds):
      for name in (("ref", "head") if k % 2 == 0 else ("head", "ref")):
        runs[name].append(method_rows(a, ref_root if name == "ref" else ROOT, ("train",), (True,)))
  total = lambda m: m["lower_s"] + m["compile_s"]
  lines = [f"# Compile time of each method's train step: the code of {ref_name} against {head_name}", "",
           f"- {header}; {started}.",
           f"- Command: `python -m experiments.bench_compile --methods --ref {a.ref} --rounds {a.rounds}` (the rows of "
           "`--methods`' train steps, scanned layers; abstract state, trace + lower, then XLA compile, each row in a "
           f"fresh process, no compilation cache; {a.rounds} rounds, the two codes in alternating order; "
           f"{ref_name} exported with `git archive` and run from there).",
           "- Per row: the median over the rounds of trace + lower + compile seconds (wall) and of the CPU seconds "
           "(user + system of the compiling process).", "",
           f"| arm | total, {ref_name} (s) | total, {head_name} (s) | {head_name} / {ref_name} | CPU s, {ref_name} | "
           f"CPU s, {head_name} | x dense, {ref_name} | x dense, {head_name} |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  med = lambda name, key, f: float(sorted(f(r[key]) for r in runs[name])[len(runs[name]) // 2])
  key = lambda arm: (arm, True, "train")
  for arm in METHOD_ARMS:
    t_ref, t_head = med("ref", key(arm), total), med("head", key(arm), total)
    d_ref, d_head = med("ref", key("dense"), total), med("head", key("dense"), total)
    lines.append(f"| {arm} | {t_ref:.1f} | {t_head:.1f} | {t_head / t_ref:.2f}x | "
                 f"{med('ref', key(arm), lambda m: m['cpu_s']):.1f} | {med('head', key(arm), lambda m: m['cpu_s']):.1f} | "
                 f"{t_ref / d_ref:.2f}x | {t_head / d_head:.2f}x |")
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def run_methods(a) -> None:
  from experiments.common import RESULTS, ROOT, machine_line, utc_now
  if a.ref:
    run_against_ref(a)
    return
  out = a.out or os.path.join(RESULTS, "compile_methods.md")
  rows = method_rows(a, ROOT)
  total = lambda m: m["lower_s"] + m["compile_s"]
  lines = ["# Compile time of each method's train step and sampler against dense's (crops 32x32 testbed)", "",
           f"- {machine_line()}; {utc_now()}.",
           f"- Command: `python -m experiments.bench_compile --methods --steps {a.steps} --num {a.num}` (abstract state; "
           "trace + lower, then XLA compile; each row in a fresh process, no compilation cache).",
           "- Arms: configs/frontier_crops32.py (DiT depth 4, width 128, patch 4; routing bins 1.0..0.3, 4 regions; "
           "PPFlow-2 stages ((0.5, (4, 8)), (1.0, (4, 4))); composed = PPFlow-2 + routing + 4 pruned timestep groups "
           "with the frontier run's block structure). Train step: one batch of train.batch_size; sampler: "
           f"{a.num} images, Heun {a.steps} steps, the CLI's generate path.",
           "- 'scanned, trained ratios' bins': the sampler specialized to a trained run's ratio table "
           "(TRAINED_RATIOS, from results/routing.md's learned-0.5 run: 5 of the 8 bins used; every composed group "
           "given the same table), as `generate_images` specializes to the run's parameters; the other sampler rows "
           "compile every bin (the bin chosen on device).",
           "- 'CPU seconds' (user + system of the compiling process) is the work itself; wall times stretch with load.",
           "", "| program | arm | layers | trace + lower (s) | XLA compile (s) | total (s) | CPU seconds | x dense (total) |",
           "|---|---|---|---:|---:|---:|---:|---:|"]
  for what in ("train", "sample"):
    dense = rows.get(("dense", True, what))
    for arm in METHOD_ARMS:
      for scan in (True, False, "trained"):
        m = rows.get((arm, scan, what))
        if m is None:
          continue
        layers = {True: "scanned", False: "per-layer loop", "trained": "scanned, trained ratios' bins"}[scan]
        if "timeout" in m:
          lines.append(f"| {what} | {arm} | {layers} | - | - | > {m['timeout']:.0f} | - | - |")
          continue
        ratio = f"{total(m) / total(dense):.2f}x" if dense and "timeout" not in dense else "-"
        lines.append(f"| {what} | {arm} | {layers} | {m['lower_s']:.1f} | {m['compile_s']:.1f} | {total(m):.1f} | "
                     f"{m['cpu_s']:.1f} | {ratio} |")
  with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_compile", description=__doc__.split("\n\n")[0])
  ap.add_argument("--size", default="XL", choices=("S", "B", "L", "XL"))
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--image", type=int, default=32, help="latent side (32: 256 tokens at patch 2)")
  ap.add_argument("--timeout", type=float, default=600.0, help="seconds per setting before it is reported as timed out")
  ap.add_argument("--out", default=None, help="default experiments/results/compile.md")
  ap.add_argument("--methods", action="store_true", help="each method's train step and sampler vs dense's")
  ap.add_argument("--steps", type=int, default=16, help="--methods: Heun steps of the sampler")
  ap.add_argument("--num", type=int, default=40, help="--methods: images per sampler call")
  ap.add_argument("--ref", default=None, help="--methods: the train steps with the code of this git revision "
                  "against this checkout (writes experiments/results/compile_vs_ref.md)")
  ap.add_argument("--rounds", type=int, default=3, help="--ref: rounds, the two codes in alternating order")
  ap.add_argument("--_child", choices=("scan", "loop"), help=argparse.SUPPRESS)
  ap.add_argument("--_method", help=argparse.SUPPRESS)
  a = ap.parse_args()
  from adaflow.parallel.precision import apply_xla_cpu_defaults
  apply_xla_cpu_defaults()        # as the CLI starts; the compile subprocesses inherit it
  if a._method:
    arm, scan, what, trained = a._method.split(":")
    print(json.dumps(method_child(arm, scan == "1", what, a.steps, a.num, trained == "1")), flush=True)
    return
  if a.methods:
    run_methods(a)
    return
  if a._child:
    print(json.dumps(child(a.size, a.batch, a._child == "scan", a.image)), flush=True)
    return
  # Imported here, not at the top: a compile subprocess imports only what it measures.
  from experiments.common import RESULTS, ROOT, machine_line, utc_now
  a.out = a.out or os.path.join(RESULTS, "compile.md")
  head = [f"- {machine_line()}; {utc_now()}.",
          "- Wall times stretch with the machine's load; 'CPU seconds' (user + system of the compiling process) "
          "is the work itself, the better figure to compare on a shared machine."]
  rows = []
  for mode in ("scan", "loop"):
    cmd = [sys.executable, "-m", "experiments.bench_compile", "--_child", mode, "--size", a.size,
           "--batch", str(a.batch), "--image", str(a.image)]
    t0 = time.perf_counter()
    try:
      r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=a.timeout)
    except subprocess.TimeoutExpired:
      rows.append({"scan": mode == "scan", "timeout": a.timeout})
      print(mode, "timed out", flush=True)
      continue
    if r.returncode != 0:
      raise SystemExit(f"{mode}: the compile subprocess failed:\n{r.stderr[-2000:]}")
    m = json.loads(r.stdout.strip().splitlines()[-1])
    m["wall_s"] = time.perf_counter() - t0
    rows.append(m)
    print(mode, m, flush=True)
  tokens = (a.image // 2) ** 2
  lines = [f"# Compile time of one DiT-{a.size}/2 train step ({tokens} tokens, batch {a.batch}): scanned vs unrolled blocks",
           "", *head, f"- Command: `python -m experiments.bench_compile --size {a.size} --batch {a.batch}` "
           "(abstract params; trace + lower, then XLA compile; each setting in a fresh process).", "",
           "| model.scan_blocks | trace + lower (s) | XLA compile (s) | total (s) | CPU seconds (lower + compile) | "
           "process wall incl. imports (s) |",
           "|---|---|---|---|---|---|"]
  for m in rows:
    if "timeout" in m:
      lines.append(f"| {m['scan']} | - | - | > {m['timeout']:.0f} (timed out) | - | - |")
    else:
      lines.append(f"| {m['scan']} | {m['lower_s']:.1f} | {m['compile_s']:.1f} | {m['lower_s'] + m['compile_s']:.1f} | "
                   f"{m.get('cpu_s', float('nan')):.1f} | {m['wall_s']:.1f} |")
  with open(a.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
