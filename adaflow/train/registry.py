"""The objective registry (train layer): `config.objective` -> objective, with the loading that
some objectives need (a frozen generator, a DQ-VAE tokenizer, the evaluation classifier) done here
so that the objectives themselves (adaflow.objectives) take what they need in their constructors.

`load_run(workdir) -> (Trainer, params, step)` is passed in by the loop
(`adaflow.train.loop.load_trainer_and_params`); it is only needed by objectives that read another
run (`step_selector`, `dq_transformer`).
"""
from __future__ import annotations

from adaflow import config as config_lib
from adaflow import data as data_lib
from adaflow.compose.generator import generator_for
from adaflow.compose.objective import ComposedObjective
from adaflow.eval.classifier import cache_dir, get_classifier
from adaflow.objectives.dq_transformer import DQTransformerObjective
from adaflow.objectives.dqvae import DQVAEObjective, build_tokenizer
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


def step_selector_objective(config, info, load_run=None, workdir: str = ".") -> StepSelectorObjective:
  """The AdaDiff policy objective with its frozen generator (`selector.generator_workdir`) and,
  for the 'classifier' / 'features' qualities, the reward classifier (seed `selector.classifier_seed`,
  another network than the evaluation's) from the generator's cache."""
  del workdir   # the classifier is cached beside the generator's run
  s = config.selector
  gen_tr, params, _ = _need_load_run(load_run, "objective 'step_selector'")(s.generator_workdir)
  if tuple(gen_tr.info.image_shape) != tuple(info.image_shape) or gen_tr.info.num_classes != info.num_classes:
    raise ValueError(f"config.data: the generator in {s.generator_workdir} was trained on "
                     f"{tuple(gen_tr.info.image_shape)} with {gen_tr.info.num_classes} classes, this config "
                     f"describes {tuple(info.image_shape)} with {info.num_classes}; use the generator's data config")
  classifier = None
  if s.quality in ("classifier", "features"):
    classifier = get_classifier(config.data, cache_dir(gen_tr.config, s.generator_workdir or "."),
                                seed=int(s.classifier_seed))
  return StepSelectorObjective(config, info, generator_for(gen_tr.config, gen_tr.info), params, classifier,
                               sample_config=gen_tr.config.sample)


def load_tokenizer(workdir: str, load_run):
  """(DQTokenizer, frozen params, tokenizer config) from a DQ-VAE workdir's latest checkpoint."""
  tr, params, _ = load_run(workdir)
  if tr.config.objective != "dqvae":
    raise ValueError(f"config.tokenizer_workdir={workdir!r} holds a {tr.config.objective!r} run, "
                     "not a DQ-VAE (objective 'dqvae'); train one with configs/quickstart_dqvae.py")
  return tr.objective.tokenizer, to_host(params), tr.config


def dq_transformer_objective(config, info, load_run=None, workdir: str = ".") -> DQTransformerObjective:
  """The DQ-Transformer objective with the frozen tokenizer of `config.tokenizer_workdir`."""
  del workdir
  tok, tok_params, tok_cfg = load_tokenizer(config.tokenizer_workdir,
                                            _need_load_run(load_run, "objective 'dq_transformer'"))
  for field in ("name", "image_size", "channels"):
    if tok_cfg.data[field] != config.data[field]:
      raise ValueError(f"config.data.{field}={config.data[field]!r} differs from the tokenizer's "
                       f"{tok_cfg.data[field]!r} ({config.tokenizer_workdir}); use the same data settings")
  return DQTransformerObjective(config, info, (tok, tok_params))


def dqvae_objective(config, info, load_run=None, workdir: str = ".") -> DQVAEObjective:
  """The DQ-VAE objective, with a classifier (seed `dqvae.perceptual_seed`) when `dqvae.perceptual_weight > 0`
  (cached where `adaflow eval` caches it for this run: `cache_dir(config, workdir)`)."""
  del load_run
  d = config.dqvae
  images = None
  if d.router == "entropy":   # the entropy threshold is a statistic of training images
    images, _ = data_lib.load_arrays(config.data, int(d.entropy_num_images), seed=0)
  classifier = None
  if float(d.perceptual_weight) > 0:
    classifier = get_classifier(config.data, cache_dir(config, workdir), seed=int(d.perceptual_seed))
  return DQVAEObjective(config, info, build_tokenizer(d, info, images), classifier)


_FACTORIES = {
    "step_selector": step_selector_objective,
    "dq_transformer": dq_transformer_objective,
    "dqvae": dqvae_objective,
}


def objective_class(config):
  """The class named by `config.objective` (its `validate`, abilities), or a ValueError."""
  if config.objective not in OBJECTIVES:
    raise ValueError(f"config.objective: must be one of {sorted(OBJECTIVES)}, got {config.objective!r}")
  return OBJECTIVES[config.objective]


def validate(config, info=None, num_devices=None, num_processes: int = 1) -> None:
  """`adaflow.config.validate` with the checks of `config.objective`'s objective."""
  config_lib.validate(config, info, num_devices=num_devices, num_processes=num_processes,
                      checks=(objective_class(config).validate,))


def build_objective(config, info, load_run=None, workdir: str = "."):
  """Objective named by `config.objective` for the dataset described by `info`; `load_run` reads
  other runs (frozen generator / tokenizer) for the objectives that need one; `workdir` is the
  run's (where the evaluation classifier is cached)."""
  name = config.objective
  objective_class(config).validate(config, info)
  if name in _FACTORIES:
    return _FACTORIES[name](config, info, load_run, workdir)
  return OBJECTIVES[name](config, info)
