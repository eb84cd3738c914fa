"""Objectives of timestep-grouped train-then-prune (arXiv 2312.13307).

`GroupFinetuneObjective` (config.objective = "grouped_finetune"): stage 2, fine-tunes ONE group's
sliced sub-model (`config.model.blocks`) with flow matching on times inside that group's range
`config.grouped.t_range = (lo, hi)` only. Times follow the stage-1 distribution truncated to the
range (`flow.t_sampler`: truncated logit-normal, or uniform in range).

The whole timestep-grouped model `{group_i: params_i}` is sampled by the composed generator
(adaflow.compose.generator_for) and, trained as one, by objective 'composed' with compose.grouped.
"""
from __future__ import annotations

from typing import Optional

import jax

from adaflow import flow
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
