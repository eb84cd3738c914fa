"""Objectives: what one training step optimises. The loop in `adaflow.train` is written once and
calls an objective; each method adds an objective (and a config), never a second loop.

An objective provides:
  init(rng) -> boxed Flax variables (logical axis names attached, for sharding)
  loss(params, batch, rng) -> (scalar loss, dict of scalar metrics)
  generate(params, rng, labels, **sample_kw) -> images [B, H, W, C] in about [-1, 1]
"""
from __future__ import annotations

from adaflow.compose import spec as _compose_spec  # noqa: F401  registers the `composed` validator
from adaflow.objectives.dq_transformer import DQTransformerObjective
from adaflow.objectives.dqvae import DQVAEObjective
from adaflow.objectives.flow_matching import FlowMatchingObjective
from adaflow.objectives.grouped import GroupFinetuneObjective
from adaflow.objectives.ppflow import PPFlowObjective
from adaflow.objectives.routed import RoutedFlowMatchingObjective
from adaflow.objectives.step_selector import StepSelectorObjective

OBJECTIVES = {
    "flow_matching": FlowMatchingObjective,              # dense DiT (foundation)
    "ppflow": PPFlowObjective,                           # pyramidal patchification
    "routed_flow_matching": RoutedFlowMatchingObjective, # DiffCR token routing + ratio loss
    "grouped_finetune": GroupFinetuneObjective,          # train-then-prune, stage 2 per group
    "step_selector": StepSelectorObjective,              # AdaDiff policy (REINFORCE)
    "dqvae": DQVAEObjective,                             # DQ-VAE tokenizer (stage 1)
    "dq_transformer": DQTransformerObjective,            # DQ-Transformer (stage 2)
    "composed": None,                                    # any subset of stages/routing/groups (compose)
}


def _composed_objective(config, info):
  """adaflow.compose.objective imports this package's modules, so it is imported on first use."""
  from adaflow.compose.objective import ComposedObjective
  return ComposedObjective(config, info)


OBJECTIVES["composed"] = _composed_objective


def build_objective(config, info):
  """Objective named by `config.objective` for the dataset described by `info`."""
  name = config.get("objective", "flow_matching")
  if name not in OBJECTIVES:
    raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
  return OBJECTIVES[name](config, info)
