"""Objectives of timestep-grouped train-then-prune (arXiv 2312.13307).

`GroupFinetuneObjective` (config.objective = "grouped_finetune"): stage 2, fine-tunes ONE group's
sliced sub-model (`config.model.blocks`) with flow matching on times inside that group's range
`config.grouped.t_range = (lo, hi)` only. Times follow the stage-1 distribution truncated to the
range (`flow.t_sampler`: truncated logit-normal, or uniform in range).

`GroupedFlowObjective`: the whole timestep-grouped model `{group_i: params_i}`. Its `loss` trains
all groups on one batch with per-group *static* slices (slice sizes proportional to each group's
probability under the stage-1 t distribution); its `generate` integrates each group's slice of
the time grid with that group's network. It is what the driver and benchmark sample with.
"""
from __future__ import annotations

from typing import Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow import flow
from adaflow.models.dit import BlockSpec, DiT, dit_from_config
from adaflow.models.grouped import GroupedModel, group_key
from adaflow.objectives.flow_matching import FlowMatchingObjective


def t_mass(flow_config, lo: float, hi: float) -> float:
  """Probability of [lo, hi] under the training t distribution (`flow.t_sampler`)."""
  return flow.t_cdf(hi, flow_config) - flow.t_cdf(lo, flow_config)


def t_range_of(config) -> tuple[float, float]:
  r = config.grouped.t_range
  if r is None or len(r) != 2 or not 0.0 <= float(r[0]) < float(r[1]) <= 1.0:
    raise ValueError(f"config.grouped.t_range: the group's time range must be (lo, hi) with "
                     f"0 <= lo < hi <= 1, got {r!r} (set by the grouped driver)")
  return float(r[0]), float(r[1])


class GroupFinetuneObjective(FlowMatchingObjective):
  """Flow matching of one group's sub-model on t in `config.grouped.t_range` (stage 2)."""

  @classmethod
  def validate(cls, config, info) -> None:
    t_range_of(config)

  def __init__(self, config, info):
    self.t_lo, self.t_hi = t_range_of(config)
    super().__init__(config, info)

  def loss(self, params, batch, rng: jax.Array, t: Optional[jax.Array] = None, **apply_kw):
    """batch: {'image': [B, H, W, C], 'label': [B]} -> (loss, metrics); t drawn inside the range."""
    if t is None:
      t = flow.sample_t_in_range(jax.random.fold_in(rng, 17), batch["image"].shape[0], self.t_lo, self.t_hi,
                                 self.config.flow)
    return super().loss(params, batch, rng, t=t, **apply_kw)


def slice_sizes(batch: int, masses: Sequence[float]) -> list[int]:
  """Static per-group batch slice sizes proportional to `masses`, each >= 1, summing to `batch`."""
  n = len(masses)
  if batch < n:
    raise ValueError(f"config.train.batch_size: {batch} is smaller than the number of groups {n}")
  m = np.maximum(np.asarray(masses, np.float64), 1e-12)
  raw = 1 + m / m.sum() * (batch - n)
  sizes = np.floor(raw).astype(int)
  for j in np.argsort(-(raw - sizes))[: batch - sizes.sum()]:
    sizes[j] += 1
  return [int(s) for s in sizes]


class GroupedFlowObjective(FlowMatchingObjective):
  """The timestep-grouped model as an objective: params are `{group_i: {'params': ...}}`.

  `blocks_per_group[i]` are the BlockSpecs of group i's sub-model (None = the dense base);
  `edges` [N + 1] the group boundaries in t.
  """

  def __init__(self, config, info, blocks_per_group: Sequence[Optional[Sequence[BlockSpec]]],
               edges: Sequence[float]):
    super().__init__(config, info)
    base = self.model
    models = [base if b is None else base.clone(blocks=tuple(b), depth=len(b), parent=None)
              for b in blocks_per_group]
    self.grouped = GroupedModel(models, edges)
    self.masses = [t_mass(config.flow, float(edges[i]), float(edges[i + 1])) for i in range(len(models))]

  def init(self, rng: jax.Array):
    x, t, y = self.dummy_inputs()
    return {group_key(i): m.init(jax.random.fold_in(rng, i), x, t, y)
            for i, m in enumerate(self.grouped.models)}

  def loss(self, params, batch, rng: jax.Array, t=None, **apply_kw):
    """All groups on one batch: static slice i gets times drawn inside group i."""
    x, y = batch["image"], batch["label"]
    chex.assert_rank(x, 4)
    sizes = slice_sizes(x.shape[0], self.masses)
    k_t, k_noise, k_drop = jax.random.split(rng, 3)
    e = self.grouped.edges
    t = jnp.concatenate([flow.sample_t_in_range(jax.random.fold_in(k_t, i), s, e[i], e[i + 1], self.config.flow)
                         for i, s in enumerate(sizes)])
    noise = jax.random.normal(k_noise, x.shape, jnp.float32)
    x_t, target = self.interpolant.path(x, noise, t)
    pred = self.grouped.apply_sliced(params, x_t, t, self.drop_labels(k_drop, y), sizes, **apply_kw)
    loss = jnp.mean(jnp.square(pred - target))
    return loss, {"loss": loss}

  def group_velocity_fn(self, params, i: int, labels: jax.Array, cfg_scale: float, **apply_kw):
    def model_fn(x, t, y):
      return self.interpolant.velocity(self.grouped.apply_group(params, i, x, t, y, **apply_kw), x, t)
    return flow.guided(model_fn, labels, self.null_label, cfg_scale)

  def generate(self, params, rng: jax.Array, labels: jax.Array, *, steps: int, method: str = "heun",
               cfg_scale: float = 1.0, grid: Optional[np.ndarray] = None, **apply_kw) -> jax.Array:
    """labels [B] -> images [B, H, W, C]: each group's run of grid steps uses its own network."""
    self.grouped.check_params(params)
    grid = flow.time_grid(steps) if grid is None else np.asarray(grid)
    x = jax.random.normal(rng, (labels.shape[0],) + tuple(self.info.image_shape), jnp.float32)
    for g, sub in self.grouped.partition.segments(grid):
      x = flow.integrate(self.group_velocity_fn(params, g, labels, cfg_scale, **apply_kw), x, sub, method)
    return x
