"""PPFlow objective (arXiv 2506.23543): flow matching with a pyramid of patch sizes over time.

Training: the batch [B, ...] is cut into consecutive per-stage slices whose sizes are
proportional to each stage's share of training time (its span for uniform t); stage s's slice
draws t from the t-distribution restricted to that stage and runs the shared DiT with stage s's
patch embedding and head. Each stage is its own forward pass with a static token count, all
inside one jitted loss. The loss weights each stage's mean squared error by its probability mass,
so it is the ordinary (stratified) flow-matching loss.

Sampling: the time grid is cut into the stages' slices (each step goes to the stage holding its
midpoint); each slice is integrated with its stage's network and CFG scale (`sample.cfg_scales`,
one per stage; default `sample.cfg_scale` everywhere). One compiled program, one `lax.scan` per
stage.
"""
from __future__ import annotations

from typing import Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from adaflow import flow
from adaflow.models import ppflow as schedule_lib
from adaflow.models.dit import dit_from_config
from adaflow.objectives.flow_matching import FlowMatchingObjective


def model_config_with_stages(model_config, schedule: schedule_lib.PatchSchedule):
  """Copy of `config.model` whose `stage_groups` come from the schedule."""
  m = model_config.copy_and_resolve_references()
  m.stage_groups = tuple(schedule.groups)
  return m


class PPFlowObjective(FlowMatchingObjective):
  """Flow matching with per-stage patchification. `self.schedule` is the PPFlow patch schedule."""

  @classmethod
  def validate(cls, config, info) -> None:
    validate_ppflow(config, info)

  def __init__(self, config, info):
    self.config = config
    self.info = info
    self.num_classes = info.num_classes
    self.null_label = info.num_classes
    self.schedule = schedule_lib.schedule_from_config(config, info.image_shape)
    self.model = dit_from_config(model_config_with_stages(config.model, self.schedule), info.image_shape,
                                 info.num_classes)
    self.interpolant = flow.make_interpolant(config.flow)
    self.class_dropout = float(config.model.class_dropout)
    self.fractions = schedule_lib.stage_fractions(self.schedule, config.flow)
    self.counts = schedule_lib.batch_split(int(config.train.batch_size), self.fractions)
    scales = config.sample.cfg_scales
    self.cfg_scales = None if scales is None else tuple(float(s) for s in scales)

  # ---- parameters -------------------------------------------------------------------------
  def init(self, rng: jax.Array):
    """Boxed variables of every stage (a plain `model.init` would only create stage 0's embed/head)."""
    def all_stages(module, x, t, y):
      return [module(x, t, y, stage=s) for s in range(self.schedule.num_stages)]
    return self.model.init(rng, *self.dummy_inputs(), method=all_stages)

  # ---- training ----------------------------------------------------------------------------
  def loss(self, params, batch, rng: jax.Array, counts: Optional[Sequence[int]] = None):
    """batch: {'image': [B, H, W, C] in [-1, 1], 'label': [B]} -> (loss, metrics).

    Rows [sum(counts[:s]), sum(counts[:s+1])) of the batch train stage s. `counts` defaults to
    the split of `train.batch_size`; a batch of another size is split by the same fractions.
    """
    x, y = batch["image"], batch["label"]
    chex.assert_rank(x, 4)
    chex.assert_shape(y, (x.shape[0],))
    b = x.shape[0]
    if counts is None:
      counts = self.counts if b == sum(self.counts) else schedule_lib.batch_split(b, self.fractions)
    if sum(counts) != b:
      raise ValueError(f"ppflow loss: per-stage counts {counts} do not sum to the batch size {b}")
    k_t, k_noise, k_drop = jax.random.split(rng, 3)
    noise = jax.random.normal(k_noise, x.shape, jnp.float32)
    y = self.drop_labels(k_drop, y)
    metrics, total, start = {}, 0.0, 0
    for s, n in enumerate(counts):
      lo, hi = self.schedule.t_starts[s], self.schedule.t_ends[s]
      sl = slice(start, start + n)
      start += n
      t = flow.sample_t_in_range(jax.random.fold_in(k_t, s), n, lo, hi, self.config.flow)
      x_t, target = self.interpolant.path(x[sl], noise[sl], t)
      pred = self.apply(params, x_t, t, y[sl], stage=s)
      chex.assert_equal_shape([pred, target])
      mse = jnp.mean(jnp.square(pred - target))
      metrics[f"loss_stage{s}"] = mse
      total = total + self.fractions[s] * mse
    loss = total / sum(self.fractions)
    metrics["loss"] = loss
    return loss, metrics

  # ---- sampling ----------------------------------------------------------------------------
  def stage_cfg_scales(self, cfg_scale: float, cfg_scales: Optional[Sequence[float]] = None) -> tuple[float, ...]:
    """Per-stage guidance: `cfg_scales` argument, else `sample.cfg_scales`, else `cfg_scale` for all."""
    scales = cfg_scales if cfg_scales is not None else self.cfg_scales
    if scales is None:
      return (float(cfg_scale),) * self.schedule.num_stages
    if len(scales) != self.schedule.num_stages:
      raise ValueError(f"config.sample.cfg_scales: needs one scale per stage ({self.schedule.num_stages}), "
                       f"got {list(scales)}")
    return tuple(float(s) for s in scales)

  def generate(self, params, rng: jax.Array, labels: jax.Array, *, steps: int, method: str = "heun",
               cfg_scale: float = 1.0, grid: Optional[np.ndarray] = None,
               cfg_scales: Optional[Sequence[float]] = None) -> jax.Array:
    """labels [B] -> images [B, H, W, C] (not clipped). Each stage integrates its slice of the
    time grid with its own network (static token count) and CFG scale."""
    scales = self.stage_cfg_scales(cfg_scale, cfg_scales)
    grid = flow.time_grid(steps) if grid is None else np.asarray(grid)
    x = jax.random.normal(rng, (labels.shape[0],) + tuple(self.info.image_shape), jnp.float32)
    for s, sub in self.schedule.grid_slices(grid):
      x = flow.integrate(self.velocity_fn(params, labels, scales[s], stage=s), x, sub, method)
    return x


def validate_ppflow(config, info) -> None:
  """`model.stages` is required by objective 'ppflow' (its `validate`); checked before any jit.
  (That no other objective sets it is `adaflow.config.validate_model`'s check.)"""
  if tuple(tuple(g) for g in config.model.stage_groups) != ((1, 1),):
    raise ValueError("config.model.stage_groups: objective 'ppflow' derives the stage groupings from "
                     "model.stages; leave model.stage_groups at its default ((1, 1),)")
  if info is not None:
    schedule = schedule_lib.schedule_from_config(config, info.image_shape)
    n = schedule.num_stages
    schedule_lib.batch_split(int(config.train.batch_size), [1.0] * n)
  else:
    stages = config.model.stages
    if not stages:
      raise ValueError("config.model.stages: objective 'ppflow' needs a patch schedule, e.g. "
                       "((0.5, (2*p, 2*p)), (1.0, (p, p))) with p = model.patch_size")
    n = len(stages)
  scales = config.sample.cfg_scales
  if scales is not None:
    if len(scales) != n or any(float(s) < 0 for s in scales):
      raise ValueError(f"config.sample.cfg_scales: needs {n} non-negative scales (one per stage, "
                       f"coarse first), got {list(scales)}")
