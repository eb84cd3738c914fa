"""PPFlow objective (arXiv 2506.23543): flow matching with a pyramid of patch sizes over time.

Training: the batch [B, ...] is cut into consecutive per-stage slices whose sizes are
proportional to each stage's share of training time (its span for uniform t); stage s's slice
draws t from the t-distribution restricted to that stage and runs the shared DiT with stage s's
patch embedding and head. Each stage is its own forward pass with a static token count, all
inside one jitted loss. The loss weights each stage's mean squared error by its probability mass,
so it is the ordinary (stratified) flow-matching loss.

Sampling (adaflow.compose.generator_for: this run's generator is the composed one with PPFlow
stages): the stage edges are inserted into the time grid and each stage integrates its run of
steps with its own network and CFG scale (`sample.cfg_scales`, one per stage; default
`sample.cfg_scale` everywhere).
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import jax

from adaflow import flow
from adaflow.models import ppflow as schedule_lib
from adaflow.models.dit import dit_from_config
from adaflow.objectives import flow_loss
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
    b = batch["image"].shape[0]
    if counts is None:
      counts = self.counts if b == sum(self.counts) else schedule_lib.batch_split(b, self.fractions)
    if sum(counts) != b:
      raise ValueError(f"ppflow loss: per-stage counts {counts} do not sum to the batch size {b}")
    return flow_loss.stratified_flow_loss(
        lambda s, x_t, t, y: self.apply(params, x_t, t, y, stage=s), batch["image"], batch["label"], rng,
        interpolant=self.interpolant, flow_config=self.config.flow, null_label=self.null_label,
        class_dropout=self.class_dropout, ranges=list(zip(self.schedule.t_starts, self.schedule.t_ends)),
        weights=self.fractions, sizes=counts, names=[f"loss_stage{s}" for s in range(len(counts))])


def validate_ppflow(config, info) -> None:
  """`model.stages` is required by objective 'ppflow' (its `validate`); checked before any jit.
  (That no other objective sets it is `adaflow.config.validate_model`'s check.)"""
  if tuple(tuple(g) for g in config.model.stage_groups) != ((1, 1),):
    raise ValueError("config.model.stage_groups: objective 'ppflow' derives the stage groupings from "
                     "model.stages; leave model.stage_groups at its default ((1, 1),)")
  if info is not None:
    schedule = schedule_lib.schedule_from_config(config, info.image_shape)
    n = schedule.num_stages
    over = schedule.over_capacity(info.image_shape[-1], int(config.model.hidden_size))
    if over and str(config.flow.prediction) != "data":
      s = over[0]
      warnings.warn(
          f"model.stages: stage {s}'s {schedule.patch_shapes[s][0]}x{schedule.patch_shapes[s][1]} patches carry "
          f"{schedule.values_per_token(s, info.image_shape[-1])} values per token, more than model.hidden_size "
          f"{config.model.hidden_size}; a {config.flow.prediction} target cannot pass through such tokens (expect a "
          "loss floor in that stage): use smaller stage patches, a wider model or flow.prediction='data'",
          UserWarning, stacklevel=2)
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
