"""Token operations of DiffCR routing: which tokens a block keeps (top-k by router weight, k
static), the masked gather / scatter around the block, and its full-width masked equivalent
(k traced, per example). The residual scaling modes are described in `routed_dit`."""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

SCALE_MODES = ("ste", "weight")


def num_kept(ratio: float, n: int) -> int:
  """k = ceil(ratio * n) tokens kept (at least 1; a tolerance absorbs float error, 0.3*10 -> 3)."""
  return max(1, min(n, int(math.ceil(ratio * n - 1e-6))))


def top_k_indices(w: jax.Array, k: int) -> jax.Array:
  """w: [B, N] -> indices [B, k] of the k largest weights, sorted ascending (original order)."""
  chex.assert_rank(w, 2)
  _, idx = jax.lax.top_k(w, k)
  return jnp.sort(idx, axis=-1)


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x: [B, N, ...], idx: [B, k] -> [B, k, ...] (masked gather)."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def scatter_tokens(x: jax.Array, idx: jax.Array, y: jax.Array) -> jax.Array:
  """Writes y [B, k, D] into x [B, N, D] at idx [B, k]; other tokens of x are unchanged."""
  chex.assert_equal_shape_prefix([idx, y], 2)
  rows = jnp.arange(x.shape[0])[:, None]
  return x.at[rows, idx].set(y.astype(x.dtype), unique_indices=True, indices_are_sorted=True)


def residual_scales(w: jax.Array, mode: str) -> dict:
  """Router weights [B, k] -> the block's residual multipliers {attn_scale, mlp_scale}: [B, k, 1]
  each, or absent for a branch that is not scaled (see `routed_dit`)."""
  if mode == "ste":
    s = (1.0 + (w - jax.lax.stop_gradient(w)))[..., None]
    return {"attn_scale": s, "mlp_scale": s}
  if mode == "weight":
    return {"mlp_scale": w[..., None]}
  raise ValueError(f"config.routing.scale must be one of {SCALE_MODES}, got {mode!r}")


def routed_block(block, x: jax.Array, c: jax.Array, w: jax.Array, k: int, scale_mode: str) -> jax.Array:
  """Runs `block` on the top-k tokens of x by router weight w and scatters back.

  x: [B, N, D]; c: [B, D]; w: [B, N] in (0, 1); k static -> [B, N, D]. With k == N no gather or
  scatter is emitted (every token is kept, in order)."""
  n = x.shape[1]
  if k >= n:
    return block(x, c, **residual_scales(w, scale_mode))
  idx = top_k_indices(w, k)
  sel = gather_tokens(x, idx)
  out = block(sel, c, **residual_scales(gather_tokens(w, idx), scale_mode))
  return scatter_tokens(x, idx, out)


def token_rank(w: jax.Array) -> jax.Array:
  """w: [B, N] -> rank [B, N] int32 of each token in descending weight order (ties: lower index
  first, as `lax.top_k`), so `rank < k` is exactly the top-k set."""
  order = jnp.argsort(-w, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def masked_block(block, x: jax.Array, c: jax.Array, w: jax.Array, keep: jax.Array, scale_mode: str) -> jax.Array:
  """Full-width equivalent of `routed_block`: x [B, N, D], keep [B, N] bool (k may differ per
  example and be traced). Attention keys are restricted to kept tokens; only kept tokens take the
  update. Equal to gathering the kept tokens, running the block and scattering back."""
  out = block(x, c, **residual_scales(w, scale_mode), attn_mask=keep[:, None, None, :])
  return jnp.where(keep[..., None], out, x)
