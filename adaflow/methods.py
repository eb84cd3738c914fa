"""The method table: every `config.objective` name -> how its objective is validated and built.

The DiT-family methods are presets of ONE composed model (adaflow.compose): a preset turns on
cells of it (PPFlow stages, DiffCR routing; timestep groups come from the pruning pipeline), so
one objective (`ComposedObjective`) trains every preset and one generator (`ComposedGenerator`)
samples it. Dense is the empty preset. A run's own fields stay where its users set them
(`model.stages` for 'ppflow', `grouped.t_range` for a group's fine-tune); `composed_config` maps
them onto `config.compose`, so the parameters of every run written before are the composed model's
as they are.

The other families train their own objective and sample their own way: the AdaDiff step policy
(REINFORCE over a frozen generator), the DQ-VAE tokenizer and the DQ-Transformer prior. Their
factories load what they need (a frozen generator, a tokenizer, a classifier) so that objectives
do no I/O. `load_run(workdir) -> (Trainer, params, step)` is passed in by the loop
(`adaflow.train.loop.load_trainer_and_params`).

Adding a DiT-family method: a cell in adaflow.compose (model transform, loss term, time
partition) and a preset row here; no new objective or sampler.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Callable, Optional, Sequence

import ml_collections

from adaflow import config as config_lib
from adaflow import data as data_lib
from adaflow import storage
from adaflow.compose.generator import ComposedGenerator
from adaflow.compose.objective import ComposedObjective
from adaflow.compose.spec import validate_composed
from adaflow.config_defaults import compose_defaults
from adaflow.eval.classifier import cache_dir, get_classifier, validate_evaluation
from adaflow.models import ppflow as schedule_lib
from adaflow.models.dit import BlockSpec
from adaflow.models.routing.spec import validate_routing_config
from adaflow.objectives.dq_transformer import DQTransformerObjective
from adaflow.objectives.dqvae import DQVAEObjective, build_tokenizer
from adaflow.objectives.step_selector import StepSelectorObjective
from adaflow.parallel.host import agree, is_writer, to_host


# ---- the DiT family: presets of the composed model ------------------------------------------------
def validate_ppflow(config, info) -> None:
  """'ppflow': `model.stages` (pixels) is the patch schedule; checked before anything compiles.
  (That no other objective sets it is `adaflow.config.validate_model`'s check.)"""
  if tuple(tuple(g) for g in config.model.stage_groups) != ((1, 1),):
    raise ValueError("config.model.stage_groups: objective 'ppflow' derives the stage groupings from "
                     "model.stages; leave model.stage_groups at its default ((1, 1),)")
  if info is None:
    if not config.model.stages:
      raise ValueError("config.model.stages: objective 'ppflow' needs a patch schedule, e.g. "
                       "((0.5, (2*p, 2*p)), (1.0, (p, p))) with p = model.patch_size")
    n = len(config.model.stages)
  else:
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
  scales = config.sample.cfg_scales
  if scales is not None and (len(scales) != n or any(float(s) < 0 for s in scales)):
    raise ValueError(f"config.sample.cfg_scales: needs {n} non-negative scales (one per stage, "
                     f"coarse first), got {list(scales)}")


def t_range_of(config) -> tuple[float, float]:
  """'grouped_finetune': the group's time range `grouped.t_range` = (lo, hi)."""
  r = config.grouped.t_range
  if r is None or len(r) != 2 or not 0.0 <= float(r[0]) < float(r[1]) <= 1.0:
    raise ValueError(f"config.grouped.t_range: the group's time range must be (lo, hi) with "
                     f"0 <= lo < hi <= 1, got {r!r} (set by the grouped driver)")
  return float(r[0]), float(r[1])


@dataclasses.dataclass(frozen=True)
class Preset:
  """A DiT-family method: the composed cells it turns on (None: `config.compose` as given), the
  check of the run's own fields, and whether it trains on `grouped.t_range` only."""
  cells: Optional[tuple[str, ...]]
  validate: Callable = lambda config, info: None
  t_range: bool = False


DIT_PRESETS = {
    "flow_matching": Preset(()),                                                  # dense DiT
    "ppflow": Preset(("ppflow",), validate_ppflow),                               # stage-wise patch sizes
    "routed_flow_matching": Preset(("routing",), validate_routing_config),        # DiffCR + ratio loss
    # train-then-prune stage 2: ONE group's pruned sub-model (model.blocks) on that group's times
    "grouped_finetune": Preset((), lambda config, info: t_range_of(config), t_range=True),
    "composed": Preset(None, validate_composed),                                  # any subset of cells
}


def is_dit_family(config) -> bool:
  return config.objective in DIT_PRESETS


def composed_config(config, groups: Optional[tuple[Sequence[Sequence[BlockSpec]], Sequence[float]]] = None
                    ) -> ml_collections.ConfigDict:
  """The objective-'composed' config equivalent to a DiT-family run's config: the parameters of the
  run (its own layout: `{'params': ...}`, or `{'group_i': ...}` for a grouped model) are the
  composed model's as they are. `groups` = (blocks per group, edges [N + 1]) of a train-then-prune
  model (adaflow.pipelines.grouped) turns timestep groups on."""
  name = config.objective
  if name not in DIT_PRESETS:
    raise ValueError(f"config.objective: {name!r} is not a DiT-family objective ({sorted(DIT_PRESETS)}); its "
                     "runs sample with their own objective")
  c = config.copy_and_resolve_references()
  cells = DIT_PRESETS[name].cells
  if cells is not None:
    cc = compose_defaults()
    for method in cells:
      cc[method] = True
    if name == "ppflow":
      cc.stages = config.model.stages
      c.model.stages = None
    elif c.sample.cfg_scales is not None:
      c.sample.cfg_scales = None    # per-stage scales mean nothing without stages; these runs ignored them
    c.compose = cc
  if groups is not None:
    blocks, edges = groups
    c.compose.grouped = True
    c.compose.group_blocks = tuple(tuple((int(b.num_heads), int(b.mlp_dim)) for b in g) for g in blocks)
    c.compose.group_edges = tuple(float(e) for e in edges)
  c.objective = "composed"
  return c


def generator_for(config, info) -> ComposedGenerator:
  """The sampler of a DiT-family run (any preset), reading the run's parameters as they are."""
  return ComposedGenerator(composed_config(config), info)


# ---- the other families: factories that load what their objective needs ---------------------------
def _need_load_run(load_run, what: str):
  if load_run is None:
    raise ValueError(f"{what}: build_objective needs load_run (adaflow.train.loop.load_trainer_and_params)")
  return load_run


def _stored_step(path: str, node: str, prefix: str, upstream: str) -> int:
  """`<prefix>_step` of the config stored at `path` when it names the same upstream run, else -1."""
  if not storage.exists(path):
    return -1
  stored = storage.read_json(path)
  stored = stored.get(node, {}) if node else stored
  return int(stored.get(f"{prefix}_step", -1)) if stored.get(f"{prefix}_workdir") == upstream else -1


def load_frozen_run(config, load_run, workdir: str, node: str, prefix: str, what: str):
  """(Trainer, params) of the run this one builds on and freezes -- a DQ-Transformer's DQ-VAE
  (`tokenizer_workdir` / `tokenizer_step`), a step policy's generator (`selector.generator_workdir` /
  `selector.generator_step`) -- at the checkpoint step this run was trained with, so that training
  that run further later cannot silently change this one (a retrained codebook makes a DQ-Transformer's
  codes mean other pixels). `config[node]` holds `<prefix>_workdir` and `<prefix>_step`; the step is
  `<prefix>_step` when >= 0, else the one stored in `workdir`'s config.json when it names the same
  upstream run (this run resumed or sampled with a config file that leaves the step at -1), else the
  latest; it is written into `config`, which the loop stores with the run."""
  section = config[node] if node else config
  upstream, field = section[f"{prefix}_workdir"], f"{node + '.' if node else ''}{prefix}_step"
  step = int(section[f"{prefix}_step"])
  if step < 0:   # process 0 reads (another process could see the file half written by it) and tells all
    step = agree(_stored_step(os.path.join(workdir, "config.json"), node, prefix, upstream) if is_writer() else -1)
  try:
    tr, params, got = _need_load_run(load_run, what)(upstream, step=step if step >= 0 else None)
  except ValueError as e:
    if step < 0:
      raise
    raise ValueError(f"config.{field}: this run was trained on step {step} of {upstream}, which is gone ({e}): "
                     f"that run was trained further or its checkpoints pruned; train a new one (another --workdir) on "
                     f"that run as it is now") from None
  section[f"{prefix}_step"] = int(got)
  return tr, params


def data_flags(source, config) -> str:
  """The `--config.data.*` flags that give `config` the data settings of `source` (the config of the
  run it builds on), for an error message; augmentation and input threads are left out."""
  def value(v):
    return repr(str(v)) if isinstance(v, (tuple, list)) or (isinstance(v, str) and " " in v) else str(v)
  return " ".join(f"--config.data.{k}={value(v)}" for k, v in source.data.items()
                  if k not in ("prefetch", "random_flip") and v is not None and config.data.get(k) != v)


def step_selector_objective(config, info, load_run=None, workdir: str = ".") -> StepSelectorObjective:
  """The AdaDiff policy objective with its frozen generator (`selector.generator_workdir`) and,
  for the 'classifier' / 'features' qualities, the reward classifier (seed `selector.classifier_seed`,
  another network than the evaluation's) from the generator's cache."""
  s = config.selector   # the reward classifier is cached beside the generator's run
  gen_tr, params = load_frozen_run(config, load_run, workdir, "selector", "generator", "objective 'step_selector'")
  if tuple(gen_tr.info.image_shape) != tuple(info.image_shape) or gen_tr.info.num_classes != info.num_classes:
    raise ValueError(f"config.data: the generator in {s.generator_workdir} was trained on "
                     f"{tuple(gen_tr.info.image_shape)} with {gen_tr.info.num_classes} classes, this config "
                     f"describes {tuple(info.image_shape)} with {info.num_classes}; use the generator's data "
                     f"config: {data_flags(gen_tr.config, config)}")
  classifier = None
  if s.quality in ("classifier", "features"):
    classifier = get_classifier(config.data, cache_dir(gen_tr.config, s.generator_workdir or "."),
                                seed=int(s.classifier_seed), steps=int(config.eval.classifier_steps))
  return StepSelectorObjective(config, info, generator_for(gen_tr.config, gen_tr.info), params, classifier,
                               sample_config=gen_tr.config.sample)


def dq_transformer_objective(config, info, load_run=None, workdir: str = ".") -> DQTransformerObjective:
  """The DQ-Transformer objective with the frozen tokenizer (DQTokenizer, params) of the DQ-VAE run
  in `config.tokenizer_workdir` (`load_frozen_run`: the checkpoint the run trained on)."""
  tr, tok_params = load_frozen_run(config, load_run, workdir, "", "tokenizer", "objective 'dq_transformer'")
  if tr.config.objective != "dqvae":
    raise ValueError(f"config.tokenizer_workdir={config.tokenizer_workdir!r} holds a {tr.config.objective!r} run, "
                     "not a DQ-VAE (objective 'dqvae'); train one with configs/quickstart_dqvae.py")
  for field in ("name", "image_size", "channels"):
    if tr.config.data[field] != config.data[field]:
      raise ValueError(f"config.data.{field}={config.data[field]!r} differs from the tokenizer's "
                       f"{tr.config.data[field]!r} ({config.tokenizer_workdir}); use the same data settings: "
                       f"{data_flags(tr.config, config)}")
  return DQTransformerObjective(config, info, (tr.objective.tokenizer, to_host(tok_params)))


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
    classifier = get_classifier(config.data, cache_dir(config, workdir), seed=int(d.perceptual_seed),
                                steps=int(config.eval.classifier_steps))
  return DQVAEObjective(config, info, build_tokenizer(d, info, images), classifier)


# name -> (class: its validate and abilities, factory(config, info, load_run, workdir))
OTHER_FAMILIES = {
    "step_selector": (StepSelectorObjective, step_selector_objective),      # AdaDiff policy (REINFORCE)
    "dqvae": (DQVAEObjective, dqvae_objective),                             # DQ-VAE tokenizer (stage 1)
    "dq_transformer": (DQTransformerObjective, dq_transformer_objective),   # DQ-Transformer (stage 2)
}
OBJECTIVE_NAMES = tuple(DIT_PRESETS) + tuple(OTHER_FAMILIES)


def _check_name(config) -> None:
  if config.objective not in OBJECTIVE_NAMES:
    raise ValueError(f"config.objective: must be one of {sorted(OBJECTIVE_NAMES)}, got {config.objective!r}")


def validate_objective(config, info) -> None:
  """The checks of `config.objective`'s method (ValueError naming the field; no compilation)."""
  _check_name(config)
  if config.objective in DIT_PRESETS:
    DIT_PRESETS[config.objective].validate(config, info)
  else:
    OTHER_FAMILIES[config.objective][0].validate(config, info)


def validate_unlabeled(config, info) -> None:
  """Unlabeled data (`info.num_classes == 0`) trains an unconditional model, which cannot be guided:
  classifier-free guidance contrasts a label with the null label, and every label is the null label."""
  if info is None or info.num_classes:
    return
  why = ("the data has no labels (a flat or one-class folder, tfds data.label_key=None, or "
         "data.use_labels=False): the model is unconditional")
  s, sel = config.sample, config.selector
  asked = []
  if is_dit_family(config):
    asked = [("sample.cfg_scale", s.cfg_scale)] + [("sample.cfg_scales", x) for x in s.cfg_scales or ()]
  elif config.objective == "step_selector":
    asked = [("selector.cfg_scale", sel.cfg_scale)] if sel.cfg_scale >= 0 else []
    if sel.quality == "classifier":
      raise ValueError(f"config.selector.quality: 'classifier' rewards log p(label | image), but {why}; "
                       "use 'closeness' or 'features'")
  for field, scale in asked:
    if float(scale) != 1.0:
      fix = "unset it or use 1 for every stage" if field == "sample.cfg_scales" else f"set --config.{field}=1"
      raise ValueError(f"config.{field}: {scale} asks for classifier-free guidance, but {why}; {fix}")


def uses_init_workdir(config, workdir: str) -> bool:
  """`adaflow train --init <workdir>`: True when the objective takes the workdir itself (written
  into `config`: the step policy's generator), False when --init means "start from its parameters"."""
  _check_name(config)
  return config.objective in OTHER_FAMILIES and OTHER_FAMILIES[config.objective][0].use_init_workdir(config, workdir)


def validate(config, info=None, num_devices=None, num_processes: int = 1, training: bool = True) -> None:
  """`adaflow.config.validate` with the checks of `config.objective`'s method (`training=False`:
  a finished run loaded to sample or evaluate; its train batch need not fit these devices)."""
  _check_name(config)
  config_lib.validate(config, info, num_devices=num_devices, num_processes=num_processes,
                      checks=(validate_objective, validate_unlabeled, validate_evaluation), training=training)


def build_objective(config, info, load_run=None, workdir: str = "."):
  """Objective named by `config.objective` for the dataset described by `info`; `load_run` reads
  other runs (frozen generator / tokenizer) for the objectives that need one; `workdir` is the
  run's (where the evaluation classifier is cached). Its `.generator` samples the run."""
  validate_objective(config, info)
  if config.objective in DIT_PRESETS:   # the composed objective, its preset's cells on
    preset = DIT_PRESETS[config.objective]
    return ComposedObjective(composed_config(config), info, t_range=t_range_of(config) if preset.t_range else None,
                             merge_init=preset.cells is None or "routing" in preset.cells)
  return OTHER_FAMILIES[config.objective][1](config, info, load_run, workdir)
