"""Objectives: what one training step optimises. The loop in `adaflow.train` is written once and
calls an objective; each method adds an objective (and a config), never a second loop.

An objective provides:
  init(rng) -> boxed Flax variables (logical axis names attached, for sharding)
  loss(params, batch, rng) -> (scalar loss, dict of scalar metrics)
  generate(params, rng, labels, **sample_kw) -> images [B, H, W, C] in about [-1, 1]
"""
from __future__ import annotations

from adaflow.objectives.flow_matching import FlowMatchingObjective

OBJECTIVES = {"flow_matching": FlowMatchingObjective}
from adaflow.objectives.ppflow import PPFlowObjective  # noqa: E402  PPFlow
OBJECTIVES["ppflow"] = PPFlowObjective
from adaflow.objectives.routed import RoutedFlowMatchingObjective  # noqa: E402  DiffCR
OBJECTIVES["routed_flow_matching"] = RoutedFlowMatchingObjective
from adaflow.objectives.grouped import GroupFinetuneObjective  # noqa: E402  train-then-prune stage 2
OBJECTIVES["grouped_finetune"] = GroupFinetuneObjective
from adaflow.objectives.step_selector import StepSelectorObjective  # noqa: E402  AdaDiff
OBJECTIVES["step_selector"] = StepSelectorObjective
from adaflow.objectives.dqvae import DQVAEObjective  # noqa: E402  DQ-VAE (stage 1)
OBJECTIVES["dqvae"] = DQVAEObjective
from adaflow.objectives.dq_transformer import DQTransformerObjective  # noqa: E402  DQ-Transformer (stage 2)
OBJECTIVES["dq_transformer"] = DQTransformerObjective


def build_objective(config, info):
  """Objective named by `config.objective` for the dataset described by `info`."""
  name = config.get("objective", "flow_matching")
  if name not in OBJECTIVES:
    raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
  return OBJECTIVES[name](config, info)
