"""Vector-quantisation pieces shared by DQ-VAE and the fixed-grid VQ baseline.

* `Encoder`: conv trunk with two heads, fine features at stride F/2 and coarse at stride F.
* `Decoder`: from a fine-grid map of (quantised) vectors, plus 2-D sin-cos positions, to pixels.
* `quantize`: nearest codebook entry; `ema_codebook_update`: EMA k-means update with dead-code
  restart (the non-gradient part of VQ training, applied after the optimizer step).
* `PatchDiscriminator`: the optional PatchGAN critic.

All arrays are NHWC float32. F (`coarse_stride`) is a power of two >= 2.
"""
from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.models.layers import sincos_2d


def _groups(ch: int) -> int:
  for g in (32, 16, 8, 4, 2, 1):
    if ch % g == 0 and ch // g >= 2:
      return g
  return 1


class ResBlock(nn.Module):
  """GroupNorm-SiLU-Conv3x3 x2 with a residual connection. [B, H, W, C] -> [B, H, W, C]."""
  channels: int

  @nn.compact
  def __call__(self, x):
    h = nn.Conv(self.channels, (3, 3), padding="SAME")(nn.silu(nn.GroupNorm(_groups(x.shape[-1]))(x)))
    h = nn.Conv(self.channels, (3, 3), padding="SAME",
                kernel_init=nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal"))(
                    nn.silu(nn.GroupNorm(_groups(self.channels))(h)))
    if x.shape[-1] != self.channels:
      x = nn.Conv(self.channels, (1, 1))(x)
    return x + h


class Encoder(nn.Module):
  """images [B, H, W, C] -> (fine [B, H/(F/2), W/(F/2), D], coarse [B, H/F, W/F, D]).

  Width `width`; stride-2 convs, each followed by `num_res_blocks` residual blocks.
  """
  width: int
  embed_dim: int
  coarse_stride: int
  num_res_blocks: int = 1

  @nn.compact
  def __call__(self, x):
    chex.assert_rank(x, 4)
    n_down = int(math.log2(self.coarse_stride)) - 1
    h = nn.Conv(self.width, (3, 3), padding="SAME", name="stem")(x)
    # Residual blocks only below full resolution (the full-resolution level is the CPU hot spot).
    for level in range(n_down):
      h = nn.Conv(self.width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), name=f"down_{level}")(h)
      for b in range(self.num_res_blocks):
        h = ResBlock(self.width, name=f"res_{level}_{b}")(h)
    fine = nn.Conv(self.embed_dim, (1, 1), name="fine_head")(nn.silu(nn.GroupNorm(_groups(self.width))(h)))
    c = nn.Conv(self.width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), name="down_coarse")(h)
    for b in range(self.num_res_blocks):
      c = ResBlock(self.width, name=f"res_coarse_{b}")(c)
    coarse = nn.Conv(self.embed_dim, (1, 1), name="coarse_head")(nn.silu(nn.GroupNorm(_groups(self.width))(c)))
    return fine, coarse


class Decoder(nn.Module):
  """fine-grid map [B, Gf, Gf, D] (+ fixed 2-D sin-cos positions) -> images [B, Gf*F/2, Gf*F/2, C]."""
  width: int
  channels: int
  coarse_stride: int
  num_res_blocks: int = 1

  @nn.compact
  def __call__(self, q):
    chex.assert_rank(q, 4)
    b, gh, gw, d = q.shape
    pos = jnp.asarray(sincos_2d(d, np.arange(gh), np.arange(gw)), jnp.float32)
    h = nn.Conv(self.width, (3, 3), padding="SAME", name="stem")(q + pos.reshape(1, gh, gw, d))
    for b_ in range(self.num_res_blocks):
      h = ResBlock(self.width, name=f"res_mid_{b_}")(h)
    n_up = int(math.log2(self.coarse_stride)) - 1
    for level in range(n_up):
      h = jax.image.resize(h, (h.shape[0], h.shape[1] * 2, h.shape[2] * 2, h.shape[3]), "nearest")
      h = nn.Conv(self.width, (3, 3), padding="SAME", name=f"up_{level}")(h)
      if level < n_up - 1:
        for b_ in range(self.num_res_blocks):
          h = ResBlock(self.width, name=f"res_{level}_{b_}")(h)
    return nn.Conv(self.channels, (3, 3), padding="SAME", name="out")(nn.silu(nn.GroupNorm(_groups(self.width))(h)))


class PatchDiscriminator(nn.Module):
  """PatchGAN critic: images [B, H, W, C] -> logits [B, H/4, W/4, 1]."""
  width: int = 64

  @nn.compact
  def __call__(self, x):
    h = nn.leaky_relu(nn.Conv(self.width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))(x), 0.2)
    h = nn.Conv(self.width * 2, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)))(h)
    h = nn.leaky_relu(nn.GroupNorm(_groups(self.width * 2))(h), 0.2)
    return nn.Conv(1, (3, 3), padding="SAME")(h)


# ---- codebook ------------------------------------------------------------------------------------

def quantize(z: jax.Array, embed: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Nearest codes. z [..., D], embed [K, D] -> (indices [...] int32, vectors [..., D]).

  No gradient flows to `embed` (the codebook is learned by EMA, see `ema_codebook_update`).
  """
  chex.assert_rank(embed, 2)
  chex.assert_equal(z.shape[-1], embed.shape[-1])
  embed = jax.lax.stop_gradient(embed)
  flat = z.reshape(-1, z.shape[-1])
  d = (jnp.sum(flat * flat, -1, keepdims=True) - 2.0 * flat @ embed.T + jnp.sum(embed * embed, -1)[None])
  idx = jnp.argmin(jax.lax.stop_gradient(d), axis=-1).astype(jnp.int32)
  return idx.reshape(z.shape[:-1]), embed[idx].reshape(z.shape)


def codebook_statistics(z: jax.Array, idx: jax.Array, weight: jax.Array, num_codes: int) -> tuple[jax.Array, jax.Array]:
  """Batch statistics for the EMA update. z [N, D], idx [N], weight [N] (1 = the vector is used)
  -> (counts [K], sums [K, D])."""
  chex.assert_rank([z, idx, weight], [2, 1, 1])
  onehot = jax.nn.one_hot(idx, num_codes, dtype=jnp.float32) * weight[:, None]
  z = jax.lax.stop_gradient(z)
  return onehot.sum(0), onehot.T @ z


def restart_candidates(rng: jax.Array, z: jax.Array, weight: jax.Array, num_codes: int) -> jax.Array:
  """[K, D] encoder vectors drawn (with replacement) among the used ones (weight > 0) of z [N, D]."""
  logits = jnp.where(weight > 0, 0.0, -1e9)
  idx = jax.random.categorical(rng, logits, shape=(num_codes,))
  return jax.lax.stop_gradient(z[idx])


def ema_codebook_update(codebook: dict, counts: jax.Array, sums: jax.Array, candidates: jax.Array, *,
                        decay: float, restart_threshold: float, eps: float = 1e-5) -> dict:
  """EMA k-means step with dead-code restart.

  codebook: {'embed' [K, D], 'cluster_size' [K], 'embed_sum' [K, D]}; counts [K], sums [K, D]
  from `codebook_statistics`; candidates [K, D] from `restart_candidates`.
    cluster_size <- decay * cluster_size + (1 - decay) * counts     (same for embed_sum)
    embed        <- embed_sum / Laplace-smoothed cluster_size
  Codes whose EMA cluster size falls below `restart_threshold` are re-initialised to a candidate
  (embed = embed_sum = candidate, cluster_size = 1). Returns the new codebook dict.
  """
  cs = decay * codebook["cluster_size"] + (1.0 - decay) * counts
  es = decay * codebook["embed_sum"] + (1.0 - decay) * sums
  k = cs.shape[0]
  n = jnp.sum(cs)
  smoothed = (cs + eps) / (n + k * eps) * n
  embed = es / jnp.maximum(smoothed, 1e-12)[:, None]
  dead = cs < restart_threshold
  embed = jnp.where(dead[:, None], candidates, embed)
  es = jnp.where(dead[:, None], candidates, es)
  cs = jnp.where(dead, 1.0, cs)
  return {"embed": embed, "cluster_size": cs, "embed_sum": es}
