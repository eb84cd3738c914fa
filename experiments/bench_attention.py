"""DiT's attention and MLP blocks before and after issue #18's changes, side by side in one run.

    flock /tmp/adaflow-bench.lock python -m experiments.bench_attention [--sizes S,B] [--batch 32] [--reps 5]

One block on [B, N, D] tokens with DiT-S/2 or DiT-B/2 shapes at 256 tokens, float32 params:

  attention (qkv projection, attention core, output projection)
  * `einsum, qkv fp32`: `adaflow.models.dit.Attention(impl="einsum")`, the module before #18 and
    `model.attention="auto"` off GPUs: qkv projected to float32, heads transposed to [B, H, N, hd],
    logits and values through `layers.matmul` (bf16 inputs, float32 accumulation in the bf16
    setting), softmax in float32, heads transposed back.
  * `einsum, qkv in compute dtype`: the same with the qkv projection's output in the compute dtype.
  * `dot_product_attention`: `Attention(impl="dot_product_attention")`, #18's module and "auto" on
    GPUs: qkv in the compute dtype and `jax.nn.dot_product_attention` on [B, N, H, hd] (no head
    transposes; XLA's implementation on CPU, cuDNN's fused kernel on GPUs where it applies).
  MLP (fc1, GELU, fc2)
  * `fc1 out + GELU fp32 (before #18)` vs `fc1 out + GELU in compute dtype (now)`.

Measured per compute dtype (bfloat16 and float32): jitted forward and forward + backward
(gradients w.r.t. params and input of sum(out * cotangent)), median of `--reps` interleaved calls
after one warm-up call; compile time reported separately. Writes experiments/results/attention.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.models import dit, layers
from experiments.common import RESULTS, machine_line, utc_now, write_report

SIZES = {"S": (384, 6), "B": (768, 12)}
TOKENS = 256


class EinsumAttention(nn.Module):
  """The einsum attention with `qkv_in_compute_dtype`: the qkv projection's output left in the
  compute dtype (as the dot_product_attention path does); False = Attention(impl="einsum")."""
  hidden: int
  num_heads: int
  head_dim: int
  dtype: object
  qkv_in_compute_dtype: bool = False

  @nn.compact
  def __call__(self, x):
    """x: [B, N, D] -> [B, N, D]."""
    b, n, _ = x.shape
    h, hd = self.num_heads, self.head_dim
    qkv = layers.Dense(3 * h * hd, axes=("embed", "heads"), dtype=self.dtype, name="qkv",
                       out_dtype=self.dtype if self.qkv_in_compute_dtype else jnp.float32)(x)
    qkv = qkv.reshape(b, n, 3, h, hd).transpose(2, 0, 3, 1, 4)          # [3, B, H, N, hd]
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = layers.matmul("bhqd,bhkd->bhqk", q * (hd ** -0.5), k, self.dtype)
    probs = jax.nn.softmax(logits, axis=-1)                             # float32
    out = layers.matmul("bhqk,bhkd->bhqd", probs, v, self.dtype)
    out = out.transpose(0, 2, 1, 3).reshape(b, n, h * hd)
    return layers.Dense(self.hidden, axes=("heads", "embed"), dtype=self.dtype, name="proj")(out)


class Float32Mlp(nn.Module):
  """adaflow.models.dit.Mlp as it was before issue #18: fc1's output and GELU in float32."""
  hidden: int
  mlp_dim: int
  dtype: object

  @nn.compact
  def __call__(self, x):
    """x: [B, N, D] -> [B, N, D]."""
    x = layers.Dense(self.mlp_dim, axes=("embed", "mlp"), dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x, approximate=True)
    return layers.Dense(self.hidden, axes=("mlp", "embed"), dtype=self.dtype, name="fc2")(x)


def variants(hidden: int, heads: int, dtype) -> dict:
  """{block: {variant: module}}; the first variant of each block is its baseline (before #18)."""
  hd = hidden // heads
  return {
      "attention": {"einsum, qkv fp32 (before #18; default off GPU)": dit.Attention(hidden, heads, hd, dtype, "einsum"),
                    "einsum, qkv in compute dtype": EinsumAttention(hidden, heads, hd, dtype, True),
                    "dot_product_attention (#18; default on GPU)": dit.Attention(hidden, heads, hd, dtype,
                                                                                "dot_product_attention")},
      "MLP": {"fc1 out + GELU fp32 (before #18)": Float32Mlp(hidden, 4 * hidden, dtype),
              "fc1 out + GELU in compute dtype (now)": dit.Mlp(hidden, 4 * hidden, dtype)},
  }


def programs(module, x, ct):
  """(forward, forward + backward) jitted functions of params and the params themselves."""
  params = module.init(jax.random.PRNGKey(0), x)

  def loss(p, xx):
    return jnp.sum(module.apply(p, xx).astype(jnp.float32) * ct)
  fwd = jax.jit(lambda p, xx: module.apply(p, xx))
  bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return params, fwd, bwd


def block_until_ready(tree):
  jax.tree_util.tree_map(lambda a: a.block_until_ready(), tree)


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m experiments.bench_attention", description=__doc__.split("\n\n")[0])
  ap.add_argument("--sizes", default="S,B")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--out", default=os.path.join(RESULTS, "attention.md"))
  a = ap.parse_args(argv)
  for s in a.sizes.split(","):
    if s not in SIZES:
      raise ValueError(f"--sizes: unknown size {s!r}; use a comma list of {sorted(SIZES)}")
  if a.batch < 1 or a.reps < 1:
    raise ValueError("--batch and --reps must be >= 1")
  machine, date = machine_line(), utc_now()
  t_start = time.time()
  rows = []
  for size in a.sizes.split(","):
    hidden, heads = SIZES[size]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((a.batch, TOKENS, hidden)), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((a.batch, TOKENS, hidden)), jnp.float32)
    for dtype in (jnp.bfloat16, jnp.float32):
      for block, mods in variants(hidden, heads, dtype).items():
        progs, compile_s = {}, {}
        for name, mod in mods.items():
          params, fwd, bwd = programs(mod, x, ct)
          t = time.perf_counter()
          fwd_c = fwd.lower(params, x).compile()
          bwd_c = bwd.lower(params, x).compile()
          compile_s[name] = time.perf_counter() - t
          block_until_ready(fwd_c(params, x))
          block_until_ready(bwd_c(params, x))           # warm-up
          progs[name] = (params, fwd_c, bwd_c)
        out = {n: np.asarray(progs[n][1](progs[n][0], x), np.float32) for n in progs}
        base_name = next(iter(mods))
        times = {n: {"fwd": [], "bwd": []} for n in progs}
        for _ in range(a.reps):             # interleaved: load drift hits every variant alike
          for n, (params, fwd_c, bwd_c) in progs.items():
            t = time.perf_counter()
            block_until_ready(fwd_c(params, x))
            times[n]["fwd"].append(time.perf_counter() - t)
            t = time.perf_counter()
            block_until_ready(bwd_c(params, x))
            times[n]["bwd"].append(time.perf_counter() - t)
        med = {n: {k: float(np.median(v)) for k, v in tt.items()} for n, tt in times.items()}
        base = med[base_name]
        for n in progs:
          rel = np.linalg.norm(out[n] - out[base_name]) / np.linalg.norm(out[base_name])
          rows.append(f"| DiT-{size}/2 | {jnp.dtype(dtype).name} | {block} | {n} | {1e3 * med[n]['fwd']:.1f} | "
                      f"{1e3 * med[n]['bwd']:.1f} | {base['fwd'] / med[n]['fwd']:.2f}x | "
                      f"{base['bwd'] / med[n]['bwd']:.2f}x | {compile_s[n]:.1f} | "
                      f"{'-' if n == base_name else f'{rel:.1e}'} |")
          print(rows[-1], flush=True)
  load_end = "{:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())
  argv_text = " ".join(sys.argv[1:] if argv is None else argv)
  text = "\n".join([
      "# Attention and MLP blocks before and after issue #18, side by side", "",
      f"- {machine}; load average at the end {load_end}; {date}; total {time.time() - t_start:.0f} s.",
      f"- Command: `{' '.join(['python -m experiments.bench_attention', argv_text]).strip()}`.",
      f"- One block (attention: qkv projection + attention + output projection; MLP: fc1, GELU, fc2), batch "
      f"{a.batch}, {TOKENS} tokens, float32 params; median of {a.reps} interleaved calls after a warm-up; "
      "forward+backward = gradients w.r.t. params and input. Speed-up = the block's first (before #18) variant's "
      "time / this time (same run). Rel. diff = ||out - out_first|| / ||out_first|| of the forward outputs (same "
      "params).", "",
      "| model | compute dtype | block | variant | forward ms | forward+backward ms | speed-up fwd | speed-up fwd+bwd | "
      "compile s | rel. diff |",
      "|---|---|---|---|---:|---:|---:|---:|---:|---:|", *rows, ""])
  write_report(text, a.out)


if __name__ == "__main__":
  main()
