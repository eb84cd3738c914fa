"""The learned keep ratios of DiffCR routing: the param `rho` [depth, R] (ratio =
`ratio_lr_scale * rho`) per layer and timestep region, its clamp, the neighbouring bins a ratio
interpolates between in training and the bin it snaps to at inference, the ratio loss, the
projection after each optimizer step, and host tables of the learned and snapped ratios."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adaflow.flow.partition import TimePartition
from adaflow.models.routing.spec import RoutingSpec


def region_index(t: jax.Array, boundaries: Sequence[float]) -> jax.Array:
  """t: [...] in [0, 1] -> region [...] int32; region r holds t in [b_r, b_{r+1})."""
  return TimePartition(tuple(boundaries)).index(jnp.asarray(t))


def bin_pair(rho: jax.Array, bins: Sequence[float]) -> tuple[jax.Array, jax.Array]:
  """rho scalar -> (pair index j, lam): bins[j] < rho <= bins[j+1], lam = (b2 - rho)/(b2 - b1).
  rho below the lowest bin is clamped to it (lam = 1 on the lowest bin)."""
  b = jnp.asarray(bins, jnp.float32)
  r = jnp.clip(rho, b[0], b[-1])
  j = jnp.clip(jnp.searchsorted(b, r, side="left") - 1, 0, len(bins) - 2)
  b1, b2 = b[j], b[j + 1]
  return j.astype(jnp.int32), (b2 - r) / (b2 - b1)


def snap_index(rho: jax.Array, bins: Sequence[float]) -> jax.Array:
  """Index of the bin nearest to rho (ties -> the larger ratio, i.e. keep more tokens)."""
  b = jnp.asarray(bins, jnp.float32)
  d = jnp.abs(b - rho[..., None])
  # argmin returns the first minimum; search from the top so ties go to the larger bin.
  return (len(bins) - 1 - jnp.argmin(d[..., ::-1], axis=-1)).astype(jnp.int32)


def clamp_ratio(rho: jax.Array, lo: float, hi: float) -> jax.Array:
  """Clip to [lo, hi] in the forward pass, identity gradient (rho is also projected after each
  optimizer step, so the two agree during training)."""
  return rho + jax.lax.stop_gradient(jnp.clip(rho, lo, hi) - rho)


def ratio_loss(rho: jax.Array, spec: RoutingSpec) -> jax.Array:
  """(mean over layers and regions of the clamped rho - target)^2 (regions equally weighted).
  `rho` is the raw param [depth, R] (ratio = ratio_lr_scale * param)."""
  return jnp.square(jnp.mean(clamp_ratio(spec.ratio_lr_scale * rho, spec.rho_min, spec.rho_max)) - spec.target)


def project_ratios(params: Any, spec: RoutingSpec) -> Any:
  """Projects `params['params']['rho']` onto [rho_min, rho_max] (after each optimizer step)."""
  p = dict(params)
  inner = dict(p["params"])
  inner["rho"] = jnp.clip(inner["rho"], spec.rho_min / spec.ratio_lr_scale, spec.rho_max / spec.ratio_lr_scale)
  p["params"] = inner
  return p


def ratio_table(params: Any, spec: RoutingSpec) -> np.ndarray:
  """Host array [depth, R] of the clamped learned ratios (the fixed ratio for the baseline)."""
  rho = spec.ratio_lr_scale * np.asarray(jax.device_get(params["params"]["rho"]), np.float32)
  if not spec.learned:
    return np.full(rho.shape, spec.fixed_ratio, np.float32)
  return np.clip(rho, spec.rho_min, spec.rho_max)


def snapped_table(table: np.ndarray, spec: RoutingSpec) -> np.ndarray:
  """Inference ratios [depth, R]: each entry snapped to the nearest bin (fixed ratio unchanged)."""
  if not spec.learned:
    return table
  return np.asarray(spec.bins)[np.asarray(snap_index(jnp.asarray(table), spec.bins))]
