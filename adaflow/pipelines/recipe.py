"""The composed-model training recipe, resumable at every stage (`adaflow compose`).

    W/dense/     1. dense DiT pretraining                      objective flow_matching, compose.dense_steps
    W/ppflow/    2. PPFlow levels: convert-stages init from W/dense (step-0 checkpoint), then fine-tune
                    (objective ppflow, model.stages = compose.stages), compose.ppflow_steps
    W/routed/    3. routing fine-tune of the (PPFlow) model: objective composed (stages + routing), routers
                    and rho added fresh to the previous stage's weights, compose.routing_steps
    W/prune/     4a. pruning per timestep group (adaflow.prune: importance, proxy search under the
                    progressive budget, memory bank) on the finest-stage dense view of W/routed's weights
                    (adaflow.compose.model.finest_stage_view): result.json
    W/grouped/   4b. the pruned groups fine-tuned together: objective composed (stages + routing + groups),
                    each group initialised by slicing the previous stage's weights (stage embeddings,
                    routers and rho kept), compose.grouped_steps
    W/selector/  5. AdaDiff step policy (objective step_selector) over the frozen composed generator,
                    compose.selector_steps of compose.selector_batch labels
    W/composed.json   stage directories, steps and training images per stage

Stages whose method is off in `config.compose` are skipped (the next one starts from the last one
that ran). A finished stage leaves a DONE file and is skipped on a rerun; an interrupted one resumes
from its latest checkpoint through the trainer's auto-resume (pruning from its memory bank).
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import ml_collections

from adaflow.config import require
from adaflow import data as data_lib
from adaflow import storage
from adaflow.config_defaults import merged_config
from adaflow.compose.model import base_model, finest_stage_view
from adaflow.compose.spec import spec_from_config
from adaflow.models.grouped import group_key
from adaflow.models.step_selector import parse_actions
from adaflow.pipelines.convert_stages import convert_workdir
from adaflow.parallel.host import barrier, is_writer
from adaflow.pipelines.grouped import prune, validate_grouped
from adaflow.pipelines.stages import run_stage, stage_config, train_stage
from adaflow.prune.slicing import slice_params, Structure
from adaflow.train import checkpoint as ckpt
from adaflow import methods
from adaflow.train.loop import load_params, workdir_lock

STAGES = ("dense", "ppflow", "routed", "grouped", "selector")


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(f"[adaflow compose] {msg}", flush=True)


def _has_checkpoint(path: str) -> bool:
  d = ckpt.checkpoint_dir(path)
  return any(n.isdigit() for n in storage.listdir(d))


# ---- per-stage configs ----------------------------------------------------------------------
def _base(config, name: str, steps: int, finetune: bool) -> ml_collections.ConfigDict:
  cc = config.compose
  c = stage_config(config, name, steps, lr=cc.finetune_lr if finetune else None,
                   warmup_steps=cc.finetune_warmup_steps if finetune else None)
  with c.unlocked():
    c.compose.ppflow = c.compose.routing = c.compose.grouped = c.compose.selector = False
    c.compose.stages, c.compose.group_blocks, c.compose.group_edges = (), (), ()
    c.model.stages = None
    c.sample.cfg_scales = None
  return c


def dense_config(config) -> ml_collections.ConfigDict:
  c = _base(config, "dense", config.compose.dense_steps, finetune=False)
  c.objective = "flow_matching"
  return c


def ppflow_config(config) -> ml_collections.ConfigDict:
  cc = config.compose
  c = _base(config, "ppflow", cc.ppflow_steps, finetune=True)
  c.objective = "ppflow"
  c.model.stages = tuple(tuple(s) for s in cc.stages)
  c.sample.cfg_scales = config.sample.cfg_scales
  return c


def generator_config(config, upto: str, prune_result: Optional[dict] = None) -> ml_collections.ConfigDict:
  """Objective-`composed` config of the generator after stage `upto` (routed | grouped | final):
  the methods of config.compose that are on and have been trained by then."""
  cc = config.compose
  steps = {"routed": cc.routing_steps, "grouped": cc.grouped_steps}.get(upto, 0)
  c = _base(config, upto, steps, finetune=True)
  c.objective = "composed"
  c.compose.ppflow = bool(cc.ppflow)
  if cc.ppflow:
    c.compose.stages = tuple(tuple(s) for s in cc.stages)
    c.sample.cfg_scales = config.sample.cfg_scales
  c.compose.routing = bool(cc.routing)
  if upto in ("grouped", "final") and cc.grouped:
    c.compose.grouped = True
    c.compose.group_blocks = tuple(tuple((int(h), int(m)) for h, m in _blocks(gr)) for gr in prune_result["groups"])
    c.compose.group_edges = tuple(float(e) for e in prune_result["edges"])
  return c


def _blocks(group_result: dict):
  return [(s.num_heads, s.mlp_dim) for s in Structure.from_json(group_result["structure"]).block_specs()]


def prune_view_config(config) -> ml_collections.ConfigDict:
  """Dense one-stage config of the finest PPFlow stage (what adaflow.prune searches on)."""
  cc = config.compose
  c = _base(config, "prune", 0, finetune=False)
  c.objective = "flow_matching"
  if cc.ppflow:
    info = data_lib.get_info(config.data)
    spec = spec_from_config(generator_config(config, "routed"), info)
    c.model.stage_groups = (tuple(spec.schedule.groups[-1]),)
  return c


def selector_config(config, generator_dir: str) -> ml_collections.ConfigDict:
  cc = config.compose
  c = _base(config, "selector", cc.selector_steps, finetune=False)
  c.objective = "step_selector"
  c.selector.generator_workdir = storage.absolute(generator_dir)
  c.train.batch_size = int(cc.selector_batch)
  c.train.lr = float(config.selector.lr)
  c.train.warmup_steps = min(10, int(cc.selector_steps))
  c.train.schedule = "constant"
  c.train.ema_decay = 0.0          # the policy itself is what gets sampled
  return c


# ---- the driver -----------------------------------------------------------------------------
def validate_recipe(config) -> None:
  """Every stage's config is validated before the first step of the first stage."""
  cc = config.compose
  info = data_lib.get_info(config.data)
  gen = generator_config(config, "routed")
  spec_from_config(gen, info)                     # stages, routing fit, cfg scales
  if cc.selector:
    s = config.selector
    parse_actions(s.actions, s.step_set, s.method or config.sample.method)
  if cc.grouped:
    validate_grouped(prune_view_config(config))
  for name, steps in (("dense_steps", cc.dense_steps), ("ppflow_steps", cc.ppflow_steps),
                      ("routing_steps", cc.routing_steps), ("grouped_steps", cc.grouped_steps),
                      ("selector_steps", cc.selector_steps)):
    require(isinstance(steps, int) and steps >= 0, f"compose.{name}", f"must be an integer >= 0, got {steps!r}")
  require(cc.dense_steps >= 1, "compose.dense_steps", "the recipe starts from a dense DiT; needs >= 1 step")
  methods.validate(dense_config(config), info)
  if cc.ppflow:
    methods.validate(ppflow_config(config), info)
  if cc.routing:
    methods.validate(gen, info)
  if cc.selector:   # the policy's own fields (guidance, reward) with the generator it will get
    methods.validate(selector_config(config, "<the recipe's generator>"), info)


def run_recipe(config, workdir: str, log=_log) -> dict:
  """Runs (or resumes) every enabled stage; returns the summary written to W/composed.json."""
  validate_recipe(config)
  storage.check_writable(workdir, "--workdir")   # creates it; a bad path or bucket fails before stage 1
  # Held through every stage and the pruning pass between them (each stage's training locks its own directory too).
  with workdir_lock(workdir):
    return _run_stages(config, workdir, log)


def _run_stages(config, workdir: str, log) -> dict:
  """`run_recipe` after its checks, the workdir locked."""
  cc = config.compose
  if is_writer():   # the other processes computed the same; one writes
    storage.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  bs = int(config.train.batch_size)
  summary: dict[str, Any] = {"stages": {}, "batch_size": bs}

  def stage(name: str, steps: int, fn, count: str = "images", per_step: int = bs) -> str:
    """Runs stage `name`; its summary row: dir, steps, and `count` (images, or the selector's labels)."""
    log(f"===== {name}: {steps} steps -> {os.path.join(workdir, name)} =====")
    d = run_stage(workdir, name, fn, {"steps": int(steps)}, log=log)
    summary["stages"][name] = {"dir": d, "steps": int(steps), count: int(steps) * per_step}
    return d

  last = stage("dense", cc.dense_steps, lambda d: train_stage(dense_config(config), d))

  if cc.ppflow:
    def run_ppflow(d):
      pc = ppflow_config(config)
      if not _has_checkpoint(d):
        convert_workdir(last, pc, d, log=log)
      train_stage(pc, d)
    last = stage("ppflow", cc.ppflow_steps, run_ppflow)

  if cc.routing:
    prev = last
    last = stage("routed", cc.routing_steps,
                 lambda d: train_stage(generator_config(config, "routed"), d,
                                 init_params=None if _has_checkpoint(d) else load_params(prev)))

  result = None
  if cc.grouped:
    pdir = os.path.join(workdir, "prune")
    prev_params = load_params(last)
    n_stages = len(cc.stages) if cc.ppflow else 1
    log(f"===== prune: finest-stage view of {last} -> {pdir} =====")
    result = prune(prune_view_config(config), finest_stage_view(prev_params, n_stages - 1), pdir, log=log)
    gcfg = generator_config(config, "grouped", result)
    prev = last

    def run_grouped(d):
      init = None
      if not _has_checkpoint(d):
        init = sliced_group_params(config, prev_params, result)
      train_stage(gcfg, d, init_params=init)
    last = stage("grouped", cc.grouped_steps, run_grouped)
    summary["prune"] = {"edges": result["edges"], "groups": [
        {k: gr[k] for k in ("group", "t_range", "budget_fraction", "flops_fraction", "counts")} for gr in result["groups"]]}

  summary["generator_dir"] = last
  summary["training_images"] = sum(s.get("images", 0) for s in summary["stages"].values())
  if cc.selector:
    summary["selector_dir"] = stage("selector", cc.selector_steps, lambda d: train_stage(selector_config(config, last), d),
                                    "labels", int(cc.selector_batch))
  if is_writer():   # the other processes computed the same; one writes
    storage.write_json(os.path.join(workdir, "composed.json"), summary, indent=1)
  # The evaluation (`adaflow compose`, load_composed) reads it back on every process: none may
  # read before process 0 has written it (a 2-process run once read it empty and died).
  barrier(f"composed.json {workdir}")
  log(f"composed model ready: generator {last}" + (f", selector {summary.get('selector_dir')}" if cc.selector else "")
      + f"; {summary['training_images']} training images")
  return summary


def sliced_group_params(config, params: Any, result: dict) -> dict:
  """{group_i: params of the previous stage sliced by group i's structure} (routers, rho and stage
  parameters kept; adaflow.prune.slicing)."""
  info = data_lib.get_info(config.data)
  base = base_model(config, info, spec_from_config(generator_config(config, "routed"), info))
  return {group_key(gr["group"]): slice_params(params, base, Structure.from_json(gr["structure"]))
          for gr in result["groups"]}


# ---- loading the result ---------------------------------------------------------------------
def is_composed_workdir(workdir: str) -> bool:
  """True for a finished `adaflow compose` workdir (W/composed.json)."""
  return storage.exists(os.path.join(workdir, "composed.json"))


def _stage_dir(workdir: str, recorded: str) -> str:
  """A stage directory recorded in composed.json, found under `workdir` itself: the recorded path
  is the one the recipe was given (relative to its working directory, or another mount), and
  every stage directory is W/<stage name>."""
  return os.path.join(workdir, os.path.basename(os.path.normpath(recorded)))


def load_composed(workdir: str, selector: Optional[bool] = None,
                  config: Optional[ml_collections.ConfigDict] = None):
  """(sampler config, dataset info, generator params, policy params or None) of a finished recipe.
  `selector=False` gives the generator alone (no policy) even when the recipe trained one.
  `config`: the recipe's config to use instead of the stored W/config.json (e.g. other sampling
  settings); the sampler config is built from it as the recipe built the generator's."""
  summary = storage.read_json(os.path.join(workdir, "composed.json"))
  if config is None:
    config = merged_config(storage.read_json(os.path.join(workdir, "config.json")))
  cc = config.compose
  result = None
  if cc.grouped:
    result = storage.read_json(os.path.join(workdir, "prune", "result.json"))
  c = generator_config(config, "final", result)
  use_selector = cc.selector if selector is None else (selector and cc.selector)
  policy = None
  if use_selector:
    c.compose.selector = True
    policy = load_params(_stage_dir(workdir, summary["selector_dir"]), ema=False)
  info = data_lib.get_info(c.data)
  return c, info, load_params(_stage_dir(workdir, summary["generator_dir"])), policy
