"""The objective registry (train layer): `config.objective` -> objective, with the loading that
some objectives need (a frozen generator, a DQ-VAE tokenizer, the evaluation classifier) done here
so that the objectives themselves (adaflow.objectives) take what they need in their constructors.

`load_run(workdir) -> (Trainer, params, step)` is passed in by the loop
(`adaflow.train.loop.load_trainer_and_params`); it is only needed by objectives that read another
run (`step_selector`, `dq_transformer`).
"""
from __future__ import annotations

import os


from adaflow.compose.generator import generator_for
from adaflow.compose.objective import ComposedObjective
from adaflow.eval.classifier import cache_dir, get_classifier
from adaflow.objectives.dq_transformer import DQTransformerObjective
from adaflow.objectives.dqvae import DQVAEObjective
from adaflow.objectives.flow_matching import FlowMatchingObjective
from adaflow.objectives.grouped import GroupFinetuneObjective
from adaflow.objectives.ppflow import PPFlowObjective
from adaflow.objectives.routed import RoutedFlowMatchingObjective
from adaflow.objectives.step_selector import StepSelectorObjective
from adaflow.parallel.host import to_host

OBJECTIVES = {
    "flow_matching": FlowMatchingObjective,              # dense DiT (foundation)
    "ppflow": PPFlowObjective,                           # pyramidal patchification
    "routed_flow_matching": RoutedFlowMatchingObjective, # DiffCR token routing + ratio loss
    "grouped_finetune": GroupFinetuneObjective,          # train-then-prune, stage 2 per group
    "step_selector": StepSelectorObjective,              # AdaDiff policy (REINFORCE)
    "dqvae": DQVAEObjective,                             # DQ-VAE tokenizer (stage 1)
    "dq_transformer": DQTransformerObjective,            # DQ-Transformer (stage 2)
    "composed": ComposedObjective,                       # any subset of stages/routing/groups (compose)
}


def _need_load_run(load_run, what: str):
  if load_run is None:
    raise ValueError(f"{what}: build_objective needs load_run (adaflow.train.loop.load_trainer_and_params)")
  return load_run


def step_selector_objective(config, info, load_run=None) -> StepSelectorObjective:
  """The AdaDiff policy objective with its frozen generator (`selector.generator_workdir`) and,
  for the 'classifier' / 'features' qualities, the evaluation classifier of the generator's cache."""
  s = config.selector
  gen_tr, params, _ = _need_load_run(load_run, "objective 'step_selector'")(s.generator_workdir)
  if tuple(gen_tr.info.image_shape) != tuple(info.image_shape) or gen_tr.info.num_classes != info.num_classes:
    raise ValueError(f"config.data: the generator in {s.generator_workdir} was trained on "
                     f"{tuple(gen_tr.info.image_shape)} with {gen_tr.info.num_classes} classes, this config "
                     f"describes {tuple(info.image_shape)} with {info.num_classes}; use the generator's data config")
  classifier = None
  if s.quality in ("classifier", "features"):
    classifier = get_classifier(config.data, cache_dir(gen_tr.config, s.generator_workdir or "."),
                                seed=int(s.get("classifier_seed", 0)))
  return StepSelectorObjective(config, info, generator_for(gen_tr.config, gen_tr.info), params, classifier,
                               sample_config=gen_tr.config.sample)


def load_tokenizer(workdir: str, load_run):
  """(DQTokenizer, frozen params, tokenizer config) from a DQ-VAE workdir's latest checkpoint."""
  tr, params, _ = load_run(workdir)
  if tr.config.get("objective") != "dqvae":
    raise ValueError(f"config.tokenizer_workdir={workdir!r} holds a {tr.config.get('objective')!r} run, "
                     "not a DQ-VAE (objective 'dqvae'); train one with configs/quickstart_dqvae.py")
  return tr.objective.tokenizer, to_host(params), tr.config


def dq_transformer_objective(config, info, load_run=None) -> DQTransformerObjective:
  """The DQ-Transformer objective with the frozen tokenizer of `config.tokenizer_workdir`."""
  tok, tok_params, tok_cfg = load_tokenizer(config.tokenizer_workdir,
                                            _need_load_run(load_run, "objective 'dq_transformer'"))
  for field in ("name", "image_size", "channels"):
    if tok_cfg.data.get(field) != config.data.get(field):
      raise ValueError(f"config.data.{field}={config.data.get(field)!r} differs from the tokenizer's "
                       f"{tok_cfg.data.get(field)!r} ({config.tokenizer_workdir}); use the same data settings")
  return DQTransformerObjective(config, info, (tok, tok_params))


def dqvae_objective(config, info, load_run=None) -> DQVAEObjective:
  """The DQ-VAE objective, with the evaluation classifier when `dqvae.perceptual_weight > 0`."""
  del load_run
  classifier = None
  if float(config.dqvae.perceptual_weight) > 0:
    cache = config.eval.get("cache_dir") or os.environ.get("ADAFLOW_CACHE") or ".adaflow_cache"
    classifier = get_classifier(config.data, cache, seed=config.eval.get("classifier_seed", 0))
  return DQVAEObjective(config, info, classifier)


_FACTORIES = {
    "step_selector": step_selector_objective,
    "dq_transformer": dq_transformer_objective,
    "dqvae": dqvae_objective,
}


def build_objective(config, info, load_run=None):
  """Objective named by `config.objective` for the dataset described by `info`; `load_run` reads
  other runs (frozen generator / tokenizer) for the objectives that need one."""
  name = config.get("objective", "flow_matching")
  if name not in OBJECTIVES:
    raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
  if name in _FACTORIES:
    return _FACTORIES[name](config, info, load_run)
  return OBJECTIVES[name](config, info)
