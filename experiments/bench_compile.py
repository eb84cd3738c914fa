"""Compile time of one DiT train step with the blocks unrolled vs `model.scan_blocks` (one scanned body).

    python -m experiments.bench_compile [--size XL] [--batch 32] [--timeout 600]

DiT-<size>/2 on 32x32x4 latents (256 tokens, the ImageNet-256 latent shape), bf16 matmul inputs,
fp32 params, MSE + AdamW, params and optimizer state donated. Parameters are abstract
(`jax.eval_shape`), so nothing is initialised or run: the time is tracing + lowering to StableHLO
(`lower`) and XLA compilation (`compile`). Each setting runs in a fresh subprocess (no in-memory
or persistent compilation cache shared between them). Writes experiments/results/compile.md.
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


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_compile", description=__doc__.split("\n\n")[0])
  ap.add_argument("--size", default="XL", choices=("S", "B", "L", "XL"))
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--image", type=int, default=32, help="latent side (32: 256 tokens at patch 2)")
  ap.add_argument("--timeout", type=float, default=600.0, help="seconds per setting before it is reported as timed out")
  ap.add_argument("--out", default=None, help="default experiments/results/compile.md")
  ap.add_argument("--_child", choices=("scan", "loop"), help=argparse.SUPPRESS)
  a = ap.parse_args()
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
