"""XLA's planned memory for one DiT train step under each `model.remat` policy (adaflow/parallel/remat.py),
with and without `model.scan_blocks`, under XLA:CPU's default scheduler and with its
concurrency-optimised scheduler switched off. Params and optimizer state are donated (as in the
train loop); one row without donation shows what donation saves.

    python -m experiments.bench_train_memory [--size S] [--batch 32]

Compile only (no step runs): `compiled.memory_analysis()` gives XLA's exact buffer plan
(arguments = params + AdamW state + batch; temporaries = everything else) and
`compiled.cost_analysis()` the step's FLOPs. The step is the one of `bench_vs_torch.py`: DiT-<size>/2
on 32x32x3, bf16 matmul inputs, fp32 params, MSE + AdamW. Each XLA_FLAGS setting runs in its own
subprocess (flags are read when the backend starts). Writes experiments/results/train_memory.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from experiments.common import RESULTS, ROOT, machine_line, utc_now

SCHEDULERS = {"XLA:CPU default": "",
              "concurrency-optimised scheduler off": "--xla_cpu_enable_concurrency_optimized_scheduler=false"}


def child(size: str, batch: int) -> None:
  """Prints one JSON line per remat setting (runs under the XLA_FLAGS of its parent's choosing)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax
  from adaflow.models.dit import DIT_SIZES, DiT
  depth, hidden, heads = DIT_SIZES[size]
  x = jnp.zeros((batch, 32, 32, 3))
  t = jnp.full((batch,), 0.5)
  y = jnp.zeros((batch,), jnp.int32)
  settings = [(False, False, True), (False, True, True), (False, True, False), ("full", True, True),
              ("save_dots", True, True), ("dots_no_batch", True, True)]
  if os.environ.get("BENCH_MEMORY_SETTINGS"):       # e.g. "full:1:1" (remat:scan:donate); tests / quick checks
    settings = [(r if r not in ("False", "True") else r == "True", bool(int(sc)), bool(int(d)))
                for r, sc, d in (x.split(":") for x in os.environ["BENCH_MEMORY_SETTINGS"].split(","))]
  for remat, scan, donate in settings:
    model = DiT(image_size=(32, 32), in_channels=3, patch_size=2, hidden_size=hidden, depth=depth,
                num_heads=heads, num_classes=10, remat=remat, scan_blocks=scan, dtype=jnp.bfloat16)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), x, t, y))
    tx = optax.adamw(1e-4)
    opt = tx.init(params)

    def step(p, o):
      g = jax.grad(lambda q: jnp.mean(jnp.square(model.apply(q, x, t, y) - x)))(p)
      u, o = tx.update(g, o, p)
      return optax.apply_updates(p, u), o

    compiled = jax.jit(step, donate_argnums=(0, 1) if donate else ()).lower(params, opt).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    print(json.dumps({"remat": remat, "scan": scan, "donate": donate, "temp_mib": mem.temp_size_in_bytes / 2 ** 20,
                      "args_mib": mem.argument_size_in_bytes / 2 ** 20,
                      "total_mib": (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
                                    - mem.alias_size_in_bytes) / 2 ** 20, "gflop": float(cost.get("flops", 0.0)) / 1e9}),
          flush=True)


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_train_memory",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("--size", default="S", choices=("S", "B", "L", "XL"))
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--out", default=os.path.join(RESULTS, "train_memory.md"))
  ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a._child:
    child(a.size, a.batch)
    return
  rows = []
  for name, flags in SCHEDULERS.items():
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flags).strip())
    r = subprocess.run([sys.executable, "-m", "experiments.bench_train_memory", "--_child", "--size", a.size,
                        "--batch", str(a.batch)], capture_output=True, text=True, env=env, cwd=ROOT)
    if r.returncode != 0:
      raise SystemExit(f"{name}: the compile subprocess failed:\n{r.stderr[-2000:]}")
    for line in r.stdout.strip().splitlines():
      rows.append((name, flags, json.loads(line)))
      print(name, rows[-1][2], flush=True)
  lines = [f"# Planned memory of one DiT-{a.size}/2 train step (batch {a.batch}): remat and XLA:CPU scheduler", "",
           f"- {machine_line()}; {utc_now()}.",
           f"- Command: `python -m experiments.bench_train_memory --size {a.size} --batch {a.batch}` "
           "(compile only; XLA `memory_analysis` / `cost_analysis`).", "",
           "| scheduler | XLA_FLAGS | model.remat | model.scan_blocks | donated | temporaries (MiB) | arguments (MiB) | "
           "total: args + temps + outputs - aliased (MiB) | XLA GFLOP per step |",
           "|---|---|---|---|---|---|---|---|---|"]
  lines += [f"| {n} | `{f or '(none)'}` | {m['remat']} | {m['scan']} | {m['donate']} | {m['temp_mib']:.0f} | "
            f"{m['args_mib']:.0f} | {m['total_mib']:.0f} | {m['gflop']:.0f} |" for n, f, m in rows]
  lines += ["", "XLA's `cost_analysis` counts a `lax.scan` body once, not once per block: with scan_blocks the "
            "GFLOP column is about one block's work, not the step's (the step's FLOPs are those of the unrolled "
            "row, plus the recomputation a remat policy adds). 'total' is the step's whole working set "
            "(params + AdamW state + batch + temporaries), comparable to torch's train-step RSS growth in "
            "vs_torch.md only loosely (RSS includes allocator caching)."]
  with open(a.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
