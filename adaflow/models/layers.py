"""Shared building blocks: mixed-precision dense layers, sin-cos position and timestep embeddings.

Mixed precision follows the TPU recipe: parameters are stored in float32, matmul *inputs* are cast
to the compute dtype (bfloat16 by default) and products accumulate in float32
(`preferred_element_type=float32`). What stays float32 and why: the residual stream (many small
updates summed over depth would lose bits in bf16), LayerNorm statistics (mean/variance of D
values), softmax logits and normalisers (exp amplifies rounding), the adaLN modulation (shift/scale/
gate multiply every token; [B, D], cheap) and timestep features. Tensors that only feed the next
matmul (the MLP hidden activation after GELU; qkv on the fused `dot_product_attention` path) are
kept in the compute dtype, which that matmul would round them to anyway. The einsum attention (the
default off GPUs) keeps qkv float32: XLA:CPU runs bf16-output GEMMs slower than bf16-in / f32-out
ones (experiments/results/cpu_gemm.md, attention.md). With `dtype=float32` everything is exact float32.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

Dtype = Any

xavier_uniform = nn.initializers.xavier_uniform()
zeros = nn.initializers.zeros


def _einsum_operands(spec: str) -> tuple[str, str, str]:
  ins, out = spec.replace(" ", "").split("->")
  sa, sb = ins.split(",")
  for side, other in ((sa, sb), (sb, sa)):
    missing = set(side) - set(out) - set(other)
    if missing:
      raise ValueError(f"mixed-precision einsum {spec!r}: indices {sorted(missing)} are summed within one operand")
  return sa, sb, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def mp_einsum(spec: str, a: jax.Array, b: jax.Array, compute_dtype: Dtype) -> jax.Array:
  """Two-operand einsum with inputs cast to `compute_dtype` and float32 accumulation/output.

  The backward pass casts the cotangent to `compute_dtype` too, so every matmul of the training
  step (forward and both transposes) is a `compute x compute -> float32` product: the fast path on
  TPUs and on this CPU. (JAX's default transpose would multiply a float32 cotangent by a bfloat16
  operand, which XLA's CPU backend runs several times slower than either pure type.) Gradients are
  returned in the operands' own dtypes (float32 for float32 parameters, never rounded to bf16).
  """
  return jnp.einsum(spec, a.astype(compute_dtype), b.astype(compute_dtype), preferred_element_type=jnp.float32)


def _mp_einsum_fwd(spec, a, b, compute_dtype):
  ac, bc = a.astype(compute_dtype), b.astype(compute_dtype)
  out = jnp.einsum(spec, ac, bc, preferred_element_type=jnp.float32)
  return out, (ac, bc, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))


def _mp_einsum_bwd(spec, compute_dtype, residuals, g):
  ac, bc, a_dtype_marker, b_dtype_marker = residuals
  sa, sb, out = _einsum_operands(spec)
  gc = g.astype(compute_dtype)
  da = jnp.einsum(f"{out},{sb}->{sa}", gc, bc, preferred_element_type=jnp.float32)
  db = jnp.einsum(f"{out},{sa}->{sb}", gc, ac, preferred_element_type=jnp.float32)
  return da.astype(a_dtype_marker.dtype), db.astype(b_dtype_marker.dtype)


mp_einsum.defvjp(_mp_einsum_fwd, _mp_einsum_bwd)


def matmul(spec: str, a: jax.Array, b: jax.Array, dtype: Dtype) -> jax.Array:
  """einsum in `dtype`: exact float32 if dtype is float32, else mixed precision (`mp_einsum`)."""
  if dtype == jnp.float32:
    return jnp.einsum(spec, a.astype(jnp.float32), b.astype(jnp.float32))
  return mp_einsum(spec, a, b, dtype)


class Dense(nn.Module):
  """Linear layer: float32 params, matmul in `dtype` with float32 accumulation and bias add, output
  in `out_dtype` (float32 default; the compute dtype where the output only feeds another matmul).

  `axes` are the logical names of the kernel's (input, output) dimensions; the bias takes the
  output name. They are mapped to mesh axes by `adaflow.parallel.rules`. Parameter names
  (`kernel` [in, out], `bias` [out]) follow flax.linen.Dense.
  """
  features: int
  axes: tuple
  dtype: Any = jnp.float32
  use_bias: bool = True
  kernel_init: Any = xavier_uniform
  bias_init: Any = zeros
  out_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., K] -> [..., features] in `out_dtype`."""
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                        (x.shape[-1], self.features), jnp.float32)
    lead = x.shape[:-1]
    y = matmul("nk,kf->nf", x.reshape(-1, x.shape[-1]), kernel, self.dtype).reshape(lead + (self.features,))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(self.bias_init, (self.axes[1],)),
                        (self.features,), jnp.float32)
      y = y + bias
    # Named so a remat policy can keep matmul outputs ("save_dots" in adaflow/parallel/remat.py).
    return checkpoint_name(y.astype(self.out_dtype), "dense")


def layer_norm(name: str) -> nn.LayerNorm:
  """LayerNorm computed in float32, eps 1e-6, without affine parameters (as in DiT's blocks)."""
  return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN modulation. x: [B, N, D]; shift, scale: [B, D]."""
  return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
  """[M] positions -> [M, embed_dim] as (sin, cos) halves, frequencies 1/10000^(2i/D)."""
  if embed_dim % 2:
    raise ValueError(f"sin-cos embedding dim must be even, got {embed_dim}")
  omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
  omega = 1.0 / 10000**omega
  out = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(embed_dim: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
  """Fixed 2D sin-cos embedding at grid coordinates (row positions [h], col positions [w]).

  Returns [h * w, embed_dim] in raster order. The first half encodes the column coordinate and the
  second half the row coordinate, as in the reference DiT/MAE implementation, so weights converted
  from PyTorch see the same position code. Coordinates may be fractional (strided grids, PPFlow).
  """
  if embed_dim % 4:
    raise ValueError(f"2D sin-cos embedding needs hidden_size divisible by 4, got {embed_dim}")
  grid_c, grid_r = np.meshgrid(cols.astype(np.float64), rows.astype(np.float64))
  emb_c = sincos_1d(embed_dim // 2, grid_c)
  emb_r = sincos_1d(embed_dim // 2, grid_r)
  return np.concatenate([emb_c, emb_r], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=64)
def grid_position_embedding(embed_dim: int, grid_h: int, grid_w: int, step_h: float = 1.0, step_w: float = 1.0):
  """[grid_h * grid_w, D] sin-cos code for a grid whose token (i, j) sits at (i * step_h, j * step_w)
  in the reference coordinate frame."""
  return sincos_2d(embed_dim, np.arange(grid_h) * step_h, np.arange(grid_w) * step_w)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0,
                       freq_shift: float = 0.0) -> jax.Array:
  """Sinusoidal timestep features [B] -> [B, dim], ordered (cos, sin) like DiT.

  freq_i = exp(-log(max_period) * i / (dim/2 - freq_shift)); `freq_shift=0` is the original DiT,
  `freq_shift=1` is diffusers' `Timesteps(downscale_freq_shift=1)`.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def dtype_from_name(name: str) -> Dtype:
  table = {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}
  if name not in table:
    raise ValueError(f"model.dtype must be one of {sorted(table)}, got {name!r}")
  return table[name]
