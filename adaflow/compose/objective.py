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

import flax.linen as nn
import jax

from adaflow.compose import model as model_lib
from adaflow.compose.generator import ComposedGenerator
from adaflow.models.routing.ratios import project_ratios
from adaflow.models.routing.routed_dit import merge_params
from adaflow.models.ppflow import batch_split
from adaflow.compose.spec import validate_composed
from adaflow.objectives import flow_loss
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
    if self.spec.actions is not None:
      raise ValueError("config.compose.selector: objective 'composed' trains the generator; the step policy is "
                       "trained with objective 'step_selector' on top of it (adaflow compose does both)")
    self.cells = cells(self.spec, config.flow)
    self.masses = [c[4] for c in self.cells]

  def merge_init_params(self, init_params, rng):
    """`--init` / recipe params -> the full composed tree: matching leaves copied (shapes must
    agree), routers / rho absent from the source initialised fresh."""
    fresh = jax.device_get(nn.meta.unbox(jax.jit(self.init)(rng)))
    return merge_params(init_params, fresh)

  @classmethod
  def validate(cls, config, info) -> None:
    validate_composed(config, info)

  def after_update(self, params, side):
    """Routing ratios projected onto [rho_min, rho_max] after every optimizer step."""
    del side
    if not self.routed:
      return params
    if not self.grouped:
      return project_ratios(params, self.spec.routing)
    return {k: project_ratios(v, self.spec.routing) for k, v in params.items()}

  def loss(self, params, batch, rng: jax.Array):
    """batch {'image': [B, H, W, C], 'label': [B]} -> (loss, metrics); see the module docstring."""
    counts = batch_split(batch["image"].shape[0], self.masses)
    fm_loss, metrics = flow_loss.stratified_flow_loss(
        lambda c, x_t, t, y: self.apply(params, self.cells[c][0], x_t, t, y, stage=self.cells[c][1], mode="train"),
        batch["image"], batch["label"], rng, interpolant=self.interpolant, flow_config=self.config.flow,
        null_label=self.null_label, class_dropout=self.class_dropout, ranges=[c[2:4] for c in self.cells],
        weights=self.masses, sizes=counts, names=[f"loss_g{g}s{s}" for g, s, *_ in self.cells])
    loss = fm_loss
    if self.routed:
      rs = self.spec.routing
      rhos = [model_lib.group_params(params, self.spec, g)["params"]["rho"] for g in range(self.spec.num_groups)]
      r_loss, mean_ratio = flow_loss.ratio_penalty(rhos, rs)
      loss = fm_loss + rs.ratio_loss_weight * r_loss
      metrics.update(ratio_loss=r_loss, mean_ratio=mean_ratio)
    metrics.update(loss=loss, flow_loss=fm_loss)
    return loss, metrics
