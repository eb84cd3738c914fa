"""Matmul throughput of XLA (jax.jit) vs PyTorch (oneDNN) on this machine, on a DiT's own shapes.

    python -m experiments.bench_cpu_gemm [--width 384] [--tokens 8192]

Explains the train-step ratios of `bench_vs_torch.py`: a DiT step is mostly matmuls, so the
framework whose GEMM is faster on this CPU wins. Shapes are those of a DiT block at batch x tokens
= `--tokens` rows: qkv [M, D] x [D, 3D], MLP up [M, D] x [D, 4D], MLP down [M, 4D] x [4D, D].
Precisions: fp32; bf16 inputs with fp32 output (adaflow's mixed-precision matmul, and what
torch autocast's oneDNN kernels accumulate in); bf16 in and out. Median of 5 calls after a
warm-up, all contenders interleaved in one run. Writes experiments/results/cpu_gemm.md.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common import RESULTS, machine_line, time_calls


def main():
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_cpu_gemm", description=__doc__.split("\n\n")[0])
  ap.add_argument("--width", type=int, default=384, help="DiT width D (384 = DiT-S, 768 = DiT-B)")
  ap.add_argument("--tokens", type=int, default=8192, help="rows M = batch x tokens (32 x 256)")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--out", default=os.path.join(RESULTS, "cpu_gemm.md"))
  args = ap.parse_args()
  import torch
  m, d = args.tokens, args.width
  shapes = {"qkv": (m, d, 3 * d), "mlp up": (m, d, 4 * d), "mlp down": (m, 4 * d, d)}
  rng = np.random.default_rng(0)
  rows = []
  for name, (mm, k, n) in shapes.items():
    a = rng.standard_normal((mm, k), np.float32)
    b = rng.standard_normal((k, n), np.float32)
    flops = 2.0 * mm * k * n
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ja16, jb16 = ja.astype(jnp.bfloat16), jb.astype(jnp.bfloat16)
    f32 = jax.jit(lambda x, y: x @ y)
    mixed = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ta16, tb16 = ta.bfloat16(), tb.bfloat16()
    contenders = {
        "XLA fp32": lambda: f32(ja, jb).block_until_ready(),
        "XLA bf16 in, fp32 out": lambda: mixed(ja16, jb16).block_until_ready(),
        "XLA bf16 in, bf16 out": lambda: f32(ja16, jb16).block_until_ready(),
        "torch fp32": lambda: ta @ tb,
        "torch bf16 in, bf16 out (autocast)": lambda: ta16 @ tb16,
    }
    for label, fn in contenders.items():
      fn()                                   # compile / warm up
    result = {label: [] for label in contenders}
    for _ in range(args.reps):               # interleaved repetitions
      for label, fn in contenders.items():
        result[label].append(time_calls(fn, 1))
    for label in contenders:
      rows.append((name, f"[{mm}, {k}] x [{k}, {n}]", label, flops / np.median(result[label]) / 1e9))
    print(name, {k_: round(flops / np.median(v) / 1e9, 1) for k_, v in result.items()}, flush=True)
  lines = ["# Matmul throughput on this CPU: XLA (jax.jit) vs PyTorch (oneDNN)", "",
           f"- {machine_line()}",
           f"- jax {jax.__version__}, torch {torch.__version__}, torch threads {torch.get_num_threads()}.",
           f"- Command: `python -m experiments.bench_cpu_gemm --width {d} --tokens {m}`; median of {args.reps} "
           "interleaved calls after a warm-up.", "",
           "| shape | [M, K] x [K, N] | contender | GFLOP/s |", "|---|---|---|---|"]
  lines += [f"| {s} | {dims} | {label} | {g:.0f} |" for s, dims, label, g in rows]
  best = {}
  for s, _, label, g in rows:
    best.setdefault(label, []).append(g)
  xla = np.mean(best["XLA bf16 in, fp32 out"])
  tor = np.mean(best["torch bf16 in, bf16 out (autocast)"])
  lines += ["", f"Mean over the three shapes: XLA bf16 (fp32 out) {xla:.0f} GFLOP/s, torch bf16 {tor:.0f} GFLOP/s "
            f"(XLA/torch {xla / tor:.2f}x); XLA fp32 {np.mean(best['XLA fp32']):.0f}, torch fp32 "
            f"{np.mean(best['torch fp32']):.0f} GFLOP/s."]
  with open(args.out, "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
