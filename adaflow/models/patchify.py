"""Patch embedding and unpatchify, per patch stage (the PPFlow pyramid lives here).

A *stage* is a token grid. Stage s groups each `(gh, gw)` block of base-resolution positions into
channels (space-to-depth, lossless) and then applies that stage's own patch embedding with the
base patch `p x p` kernel/stride, so one token covers a `(gh * p) x (gw * p)` pixel region. The
unpatchify head of a stage is its own linear layer followed by the exact inverse (depth-to-space).
The dense DiT is the single stage `(1, 1)`. PPFlow (arXiv 2506.23543) uses e.g. `(2, 2)` for the
noisiest stage, `(1, 2)` for the middle one and `(1, 1)` for the last one.

Shapes: images `[B, H, W, C]`; tokens `[B, N, D]` with `N = (H / (gh p)) * (W / (gw p))`.
"""
from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from adaflow.models import layers


def space_to_depth(x: jax.Array, gh: int, gw: int) -> jax.Array:
  """[B, H, W, C] -> [B, H/gh, W/gw, gh*gw*C]; channel order (row offset, col offset, C)."""
  b, h, w, c = x.shape
  if h % gh or w % gw:
    raise ValueError(f"space_to_depth: image {h}x{w} is not divisible by the grouping {gh}x{gw}")
  x = x.reshape(b, h // gh, gh, w // gw, gw, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // gh, w // gw, gh * gw * c)


def depth_to_space(x: jax.Array, gh: int, gw: int) -> jax.Array:
  """Exact inverse of `space_to_depth`: [B, h, w, gh*gw*C] -> [B, h*gh, w*gw, C]."""
  b, h, w, cc = x.shape
  c = cc // (gh * gw)
  x = x.reshape(b, h, w, gh, gw, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * gh, w * gw, c)


def patches(x: jax.Array, p: int) -> jax.Array:
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C] in raster order; patch vector order (row, col, C)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatches(x: jax.Array, p: int, grid_h: int, grid_w: int) -> jax.Array:
  """Inverse of `patches`: [B, grid_h*grid_w, p*p*C] -> [B, grid_h*p, grid_w*p, C]."""
  b, n, ppc = x.shape
  chex.assert_equal(n, grid_h * grid_w)
  c = ppc // (p * p)
  x = x.reshape(b, grid_h, grid_w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid_h * p, grid_w * p, c)


def stage_grid(image_size: tuple[int, int], patch: int, group: tuple[int, int]) -> tuple[int, int]:
  """Token grid (rows, cols) of a stage."""
  (h, w), (gh, gw) = image_size, group
  return h // (gh * patch), w // (gw * patch)


def stage_position_embedding(hidden: int, image_size: tuple[int, int], patch: int,
                             group: tuple[int, int]) -> jax.Array:
  """[N_stage, D] fixed sin-cos code evaluated on the base-resolution token grid at the strided
  positions the stage's tokens cover, so all stages share one coordinate frame: stage token (i, j)
  sits at base-grid position (gh * i, gw * j), its first merged sub-patch. This is the official
  PPFlow convention (`np.arange(0, grid, 2)` in fudan-generative-vision/PPFlow); it also means a
  stage converted from a one-level model only sees positions that model was trained on. For group
  (1, 1) this is exactly the DiT position embedding."""
  gh, gw = group
  rows, cols = stage_grid(image_size, patch, group)
  return jnp.asarray(layers.grid_position_embedding(hidden, rows, cols, float(gh), float(gw)))


class StagePatchEmbed(nn.Module):
  """Space-to-depth by `group`, then a p x p patch embedding (a linear map of each patch)."""
  patch: int
  group: tuple[int, int]
  hidden: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, H, W, C] -> tokens [B, N, D]."""
    gh, gw = self.group
    x = space_to_depth(x, gh, gw) if (gh, gw) != (1, 1) else x
    tokens = patches(x, self.patch)
    return layers.Dense(self.hidden, axes=("patch", "embed"), dtype=self.dtype, name="proj")(tokens)


class StageUnpatchify(nn.Module):
  """Linear head per token, then unpatchify and depth-to-space back to the full image."""
  patch: int
  group: tuple[int, int]
  out_channels: int
  image_size: tuple[int, int]
  dtype: Any

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    """tokens: [B, N, D] -> [B, H, W, out_channels] (float32)."""
    gh, gw = self.group
    p = self.patch
    feats = gh * gw * p * p * self.out_channels
    y = layers.Dense(feats, axes=("embed", "patch"), dtype=self.dtype, name="linear",
                     kernel_init=nn.initializers.zeros)(tokens)
    rows, cols = stage_grid(self.image_size, p, self.group)
    y = unpatches(y.astype(jnp.float32), p, rows, cols)
    return depth_to_space(y, gh, gw) if (gh, gw) != (1, 1) else y
