"""The one training objective of the DiT family: flow matching of a composed model (any subset of
PPFlow stages, routing, timestep groups). Every DiT-family method name is a preset of it
(adaflow.methods): dense is no cell, 'ppflow' the stages, 'routed_flow_matching' routing, a
group's fine-tune one pruned network on its time range.

The flow time [0, 1] (or `t_range`) is cut into *cells*: the non-empty intersections of each
timestep group's range with each PPFlow stage's range. The batch [B, ...] is cut into consecutive
static slices, one per cell, sized in proportion to the cell's probability under `flow.t_sampler`
(each >= 1); cell (g, s) draws t from the sampler restricted to the cell and runs group g's network
at stage s (routing: "train" mode, the differentiable two-bin interpolation). The loss weights each
cell's MSE by its probability mass (the stratified flow-matching loss), plus, when routing is on,
`routing.ratio_loss_weight` x the mean over groups of the ratio loss; rho is projected after each
optimizer step. One cell is the plain flow-matching loss, with t drawn as dense training draws it.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax

from adaflow import flow
from adaflow.compose import model as model_lib
from adaflow.compose.generator import ComposedGenerator
from adaflow.models.routing.ratios import project_ratios
from adaflow.models.routing.routed_dit import merge_params
from adaflow.models.ppflow import batch_split
from adaflow.objectives import flow_loss
from adaflow.objectives.base import ObjectiveBase
from adaflow.parallel.precision import describe_compute_dtype


def t_mass(flow_config, lo: float, hi: float) -> float:
  """Probability of [lo, hi] under the training t distribution (`flow.t_sampler`)."""
  return flow.t_cdf(hi, flow_config) - flow.t_cdf(lo, flow_config)


def cells(spec, flow_config, t_range: tuple[float, float] = (0.0, 1.0)) -> list[tuple[int, int, float, float, float]]:
  """[(group, stage, lo, hi, mass)] for the non-empty intersections of group and stage ranges
  (inside `t_range`)."""
  g_edges = spec.edges if spec.edges is not None else (0.0, 1.0)
  if spec.schedule is not None:
    s_ranges = list(zip(spec.schedule.t_starts, spec.schedule.t_ends))
  else:
    s_ranges = [(0.0, 1.0)]
  out = []
  for g in range(len(g_edges) - 1):
    for s, (a, b) in enumerate(s_ranges):
      lo, hi = max(g_edges[g], a, t_range[0]), min(g_edges[g + 1], b, t_range[1])
      if hi > lo + 1e-9:
        out.append((g, s, float(lo), float(hi), t_mass(flow_config, lo, hi)))
  return out


def cell_name(spec, g: int, s: int) -> str:
  """The metric of a cell's MSE: loss_stage{s} (stages only), loss_group{g} (groups only), loss_g{g}s{s}."""
  if spec.blocks_per_group is None:
    return f"loss_stage{s}"
  return f"loss_group{g}" if spec.schedule is None else f"loss_g{g}s{s}"


class ComposedObjective(ObjectiveBase):
  """Training objective of a composed model (see the module docstring); `self.generator` samples it.

  t_range: (lo, hi) trains on those times only (a timestep group's fine-tune, `grouped.t_range`).
  merge_init: `--init` params are merged into a fresh tree (routers / rho initialised fresh); off,
  they are used as they are (the presets without routing)."""

  def __init__(self, config, info, *, t_range: Optional[tuple[float, float]] = None, merge_init: bool = True):
    self.config, self.info = config, info
    self.generator = ComposedGenerator(config, info)
    self.spec = self.generator.spec
    if self.spec.actions is not None:
      raise ValueError("config.compose.selector: objective 'composed' trains the generator; the step policy is "
                       "trained with objective 'step_selector' on top of it (adaflow compose does both)")
    self.num_classes = info.num_classes
    self.model = self.generator.base             # the full-size network (pruning slices it)
    self.interpolant = self.generator.interpolant
    self.t_range = t_range
    self.merge_init = merge_init
    self.cells = cells(self.spec, config.flow, t_range or (0.0, 1.0))
    self.masses = [c[4] for c in self.cells]

  @property
  def sampler(self) -> ComposedGenerator:
    return self.generator

  def describe_compute(self) -> str:
    return describe_compute_dtype(self.config.model)

  def init(self, rng: jax.Array):
    """Boxed variables in the composed layout (every stage, routers/rho, every group)."""
    return self.generator.init(rng)

  def apply(self, params, x_t, t, y, *, group: int = 0, stage: int = 0, mode: str = "infer"):
    """Group `group`'s network at `stage`: prediction [B, H, W, C]."""
    return self.generator.apply(params, group, x_t, t, y, stage=stage, mode=mode)

  def merge_init_params(self, init_params, rng):
    """`--init` / recipe params -> the full composed tree: matching leaves copied (shapes must
    agree), routers / rho absent from the source initialised fresh."""
    if not self.merge_init:
      return init_params
    fresh = jax.device_get(nn.meta.unbox(jax.jit(self.init)(rng)))
    return merge_params(init_params, fresh)

  def after_update(self, params, side):
    """Routing ratios projected onto [rho_min, rho_max] after every optimizer step."""
    del side
    if not self.generator.routed:
      return params
    if not self.generator.grouped:
      return project_ratios(params, self.spec.routing)
    return {k: project_ratios(v, self.spec.routing) for k, v in params.items()}

  def flow_loss(self, params, batch, rng: jax.Array):
    """The (stratified) flow-matching loss over the cells -> (loss, metrics)."""
    gen, fc = self.generator, self.config.flow
    kw = dict(interpolant=self.interpolant, flow_config=fc, null_label=gen.null_label,
              class_dropout=gen.class_dropout)
    x, y = batch["image"], batch["label"]
    if len(self.cells) == 1:
      g, s, lo, hi, _ = self.cells[0]
      t = None       # the whole range: t drawn from flow.t_sampler as dense training draws it
      if (lo, hi) != (0.0, 1.0):
        t = flow.sample_t_in_range(jax.random.fold_in(rng, 17), x.shape[0], lo, hi, fc)
      return flow_loss.flow_matching_loss(lambda a, b, c: self.apply(params, a, b, c, group=g, stage=s, mode="train"),
                                          x, y, rng, t=t, **kw)
    return flow_loss.stratified_flow_loss(
        lambda c, x_t, t, y_: self.apply(params, x_t, t, y_, group=self.cells[c][0], stage=self.cells[c][1],
                                         mode="train"),
        x, y, rng, ranges=[c[2:4] for c in self.cells], weights=self.masses,
        sizes=batch_split(x.shape[0], self.masses), names=[cell_name(self.spec, g, s) for g, s, *_ in self.cells],
        **kw)

  def loss(self, params, batch, rng: jax.Array):
    """batch {'image': [B, H, W, C], 'label': [B]} -> (loss, metrics); see the module docstring."""
    fm_loss, metrics = self.flow_loss(params, batch, rng)
    if not self.generator.routed:
      return fm_loss, metrics
    rs = self.spec.routing
    rhos = [model_lib.group_params(params, self.spec, g)["params"]["rho"] for g in range(self.spec.num_groups)]
    r_loss, mean_ratio = flow_loss.ratio_penalty(rhos, rs)
    loss = fm_loss + rs.ratio_loss_weight * r_loss
    metrics.update(loss=loss, flow_loss=fm_loss, ratio_loss=r_loss, mean_ratio=mean_ratio)
    return loss, metrics
