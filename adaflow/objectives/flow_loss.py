"""The flow-matching loss of the DiT family, written once: every DiT-family objective (flow_matching,
ppflow, routed, grouped, composed), the pruning proxy and the importance pass call it.

    x_t, target = interpolant.path(x, eps, t)        (t = 0 noise, t = 1 data; adaflow.flow)
    loss = mean |apply_fn(x_t, t, y_dropped) - target|^2

`flow_matching_loss` draws t from `flow.t_sampler` for the whole batch. `stratified_flow_loss` cuts
the batch into static slices (one per PPFlow stage / timestep group / (group x stage) cell), draws
slice i's t inside its range [lo_i, hi_i) and weights slice i's MSE by its probability mass, which
is the ordinary flow-matching loss estimated with stratified t. Both use the keys the same way:
rng -> (k_t, k_noise, k_drop); slice i's times use fold_in(k_t, i).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import chex
import jax
import jax.numpy as jnp

from adaflow import flow
from adaflow.models.routing.ratios import clamp_ratio, ratio_loss
from adaflow.models.routing.spec import RoutingSpec

# (x_t [B, H, W, C], t [B], y [B]) -> prediction [B, H, W, C]
ApplyFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def drop_labels(rng: jax.Array, y: jax.Array, null_label: int, class_dropout: float) -> jax.Array:
  """Replaces labels [B] by `null_label` with probability `class_dropout` (CFG training)."""
  if class_dropout <= 0:
    return y
  drop = jax.random.uniform(rng, y.shape) < class_dropout
  return jnp.where(drop, null_label, y)


def regression_loss(apply_fn: ApplyFn, interpolant, x: jax.Array, noise: jax.Array, t: jax.Array,
                    y: jax.Array) -> jax.Array:
  """Scalar MSE of the prediction against the interpolant's target for given x, noise [B, H, W, C],
  t [B], y [B] (no randomness: the pruning proxy scores structures on fixed held-out draws)."""
  x_t, target = interpolant.path(x, noise, t)
  pred = apply_fn(x_t, t, y)
  chex.assert_equal_shape([pred, target])
  return jnp.mean(jnp.square(pred - target))


def flow_matching_loss(apply_fn: ApplyFn, x: jax.Array, y: jax.Array, rng: jax.Array, *, interpolant,
                       flow_config, null_label: int, class_dropout: float,
                       t: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
  """x [B, H, W, C], y [B] -> (loss, {'loss': loss}); t [B] drawn from `flow.t_sampler` unless given."""
  chex.assert_rank(x, 4)
  k_t, k_noise, k_drop = jax.random.split(rng, 3)
  if t is None:
    t = flow.sample_t(k_t, x.shape[0], flow_config)
  noise = jax.random.normal(k_noise, x.shape, jnp.float32)
  loss = regression_loss(apply_fn, interpolant, x, noise, t, drop_labels(k_drop, y, null_label, class_dropout))
  return loss, {"loss": loss}


def stratified_flow_loss(apply_fn: Callable[..., jax.Array], x: jax.Array, y: jax.Array, rng: jax.Array, *,
                         interpolant, flow_config, null_label: int, class_dropout: float,
                         ranges: Sequence[tuple[float, float]], weights: Sequence[float], sizes: Sequence[int],
                         names: Optional[Sequence[str]] = None) -> tuple[jax.Array, dict]:
  """x [B, H, W, C], y [B] -> (loss, metrics). Rows [sum(sizes[:i]), sum(sizes[:i+1])) form slice i:
  its t is drawn inside `ranges[i]` and `apply_fn(i, x_t, t, y)` is slice i's network. The loss is
  sum_i weights[i] * MSE_i / sum(weights) (weights: the slices' probability masses under
  `flow.t_sampler`); metrics hold `loss` and, per slice, MSE_i under `names[i]`."""
  chex.assert_rank(x, 4)
  chex.assert_shape(y, (x.shape[0],))
  if not len(ranges) == len(weights) == len(sizes) or sum(sizes) != x.shape[0]:
    raise ValueError(f"stratified_flow_loss: {len(ranges)} ranges, {len(weights)} weights and slice sizes "
                     f"{tuple(sizes)} must agree in number and the sizes must sum to the batch {x.shape[0]}")
  k_t, k_noise, k_drop = jax.random.split(rng, 3)
  noise = jax.random.normal(k_noise, x.shape, jnp.float32)
  y = drop_labels(k_drop, y, null_label, class_dropout)
  metrics, total, start = {}, 0.0, 0
  for i, ((lo, hi), n) in enumerate(zip(ranges, sizes)):
    sl = slice(start, start + n)
    start += n
    t = flow.sample_t_in_range(jax.random.fold_in(k_t, i), n, lo, hi, flow_config)
    mse = regression_loss(lambda a, b, c, i=i: apply_fn(i, a, b, c), interpolant, x[sl], noise[sl], t, y[sl])
    if names is not None:
      metrics[names[i]] = mse
    total = total + weights[i] * mse
  loss = total / sum(weights)
  metrics["loss"] = loss
  return loss, metrics


def ratio_penalty(rhos: Sequence[jax.Array], spec: RoutingSpec) -> tuple[jax.Array, jax.Array]:
  """DiffCR ratio loss (arXiv 2412.16822) averaged over the routed networks' raw `rho` params
  (one per timestep group) -> (ratio loss, mean clamped compute ratio); zero loss for fixed ratios."""
  if not spec.learned:
    return jnp.zeros((), jnp.float32), jnp.float32(spec.fixed_ratio)
  r_loss = sum(ratio_loss(r, spec) for r in rhos) / len(rhos)
  mean_ratio = jnp.mean(jnp.stack([jnp.mean(clamp_ratio(spec.ratio_lr_scale * r, spec.rho_min,
                                                        spec.rho_max)) for r in rhos]))
  return r_loss, mean_ratio
