"""Objective `composed`: flow matching for a composed model (any subset of PPFlow stages, routing,
timestep groups), so the one training loop fine-tunes every stage of the recipe.

The flow time [0, 1] is cut into *cells*: the non-empty intersections of each timestep group's
range with each PPFlow stage's range. The batch [B, ...] is cut into consecutive static slices,
one per cell, sized in proportion to the cell's probability under `flow.t_sampler` (each >= 1);
cell (g, s) draws t from the sampler restricted to the cell and runs group g's network at stage
s (routing: "train" mode, the differentiable two-bin interpolation). The loss weights each
cell's MSE by its probability mass (the stratified flow-matching loss), plus, when routing is on,
`routing.ratio_loss_weight` x the mean over groups of the ratio loss; rho is projected after each
optimizer step. With one group and one stage this is the plain (routed) flow-matching loss.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from adaflow import flow
from adaflow.compose import model as model_lib
from adaflow.compose.generator import ComposedGenerator
from adaflow.models import routing as routing_lib
from adaflow.models.ppflow import batch_split
from adaflow.compose.spec import validate_composed
from adaflow.objectives.base import ObjectiveBase
from adaflow.objectives.grouped import t_mass


def cells(spec, flow_config) -> list[tuple[int, int, float, float, float]]:
  """[(group, stage, lo, hi, mass)] for the non-empty intersections of group and stage ranges."""
  g_edges = spec.edges if spec.edges is not None else (0.0, 1.0)
  if spec.schedule is not None:
    s_ranges = list(zip(spec.schedule.t_starts, spec.schedule.t_ends))
  else:
    s_ranges = [(0.0, 1.0)]
  out = []
  for g in range(len(g_edges) - 1):
    for s, (a, b) in enumerate(s_ranges):
      lo, hi = max(g_edges[g], a), min(g_edges[g + 1], b)
      if hi > lo + 1e-9:
        out.append((g, s, float(lo), float(hi), t_mass(flow_config, lo, hi)))
  return out


class ComposedObjective(ComposedGenerator, ObjectiveBase):
  """Training objective of a composed model; sampling is ComposedGenerator's."""

  def __init__(self, config, info):
    super().__init__(config, info)
    if self.spec.step_set is not None:
      raise ValueError("config.compose.selector: objective 'composed' trains the generator; the step policy is "
                       "trained with objective 'step_selector' on top of it (adaflow compose does both)")
    self.cells = cells(self.spec, config.flow)
    self.masses = [c[4] for c in self.cells]

  def drop_labels(self, rng, y):
    if self.class_dropout <= 0:
      return y
    return jnp.where(jax.random.uniform(rng, y.shape) < self.class_dropout, self.null_label, y)

  def merge_init_params(self, init_params, rng):
    """`--init` / recipe params -> the full composed tree: matching leaves copied (shapes must
    agree), routers / rho absent from the source initialised fresh."""
    fresh = jax.device_get(nn.meta.unbox(jax.jit(self.init)(rng)))
    return routing_lib.merge_params(init_params, fresh)

  @classmethod
  def validate(cls, config, info) -> None:
    validate_composed(config, info)

  def after_update(self, params, side):
    """Routing ratios projected onto [rho_min, rho_max] after every optimizer step."""
    del side
    if not self.routed:
      return params
    if not self.grouped:
      return routing_lib.project_ratios(params, self.spec.routing)
    return {k: routing_lib.project_ratios(v, self.spec.routing) for k, v in params.items()}

  def loss(self, params, batch, rng: jax.Array):
    """batch {'image': [B, H, W, C], 'label': [B]} -> (loss, metrics); see the module docstring."""
    x, y = batch["image"], batch["label"]
    chex.assert_rank(x, 4)
    counts = batch_split(x.shape[0], self.masses)
    k_t, k_noise, k_drop = jax.random.split(rng, 3)
    noise = jax.random.normal(k_noise, x.shape, jnp.float32)
    y = self.drop_labels(k_drop, y)
    metrics, total, start = {}, 0.0, 0
    for c, ((g, s, lo, hi, mass), n) in enumerate(zip(self.cells, counts)):
      sl = slice(start, start + n)
      start += n
      t = flow.sample_t_in_range(jax.random.fold_in(k_t, c), n, lo, hi, self.config.flow)
      x_t, target = self.interpolant.path(x[sl], noise[sl], t)
      pred = self.apply(params, g, x_t, t, y[sl], stage=s, mode="train")
      mse = jnp.mean(jnp.square(pred - target))
      metrics[f"loss_g{g}s{s}"] = mse
      total = total + mass * mse
    flow_loss = total / sum(self.masses)
    loss = flow_loss
    if self.routed:
      rs = self.spec.routing
      rhos = [model_lib.group_params(params, self.spec, g)["params"]["rho"] for g in range(self.spec.num_groups)]
      if rs.learned:
        r_loss = sum(routing_lib.ratio_loss(r, rs) for r in rhos) / len(rhos)
        mean_ratio = jnp.mean(jnp.stack([jnp.mean(routing_lib.clamp_ratio(rs.ratio_lr_scale * r, rs.rho_min,
                                                                          rs.rho_max)) for r in rhos]))
      else:
        r_loss, mean_ratio = jnp.zeros((), jnp.float32), jnp.float32(rs.fixed_ratio)
      loss = flow_loss + rs.ratio_loss_weight * r_loss
      metrics.update(ratio_loss=r_loss, mean_ratio=mean_ratio)
    metrics.update(loss=loss, flow_loss=flow_loss)
    return loss, metrics
