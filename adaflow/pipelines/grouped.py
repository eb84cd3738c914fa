"""The train-then-prune driver: `adaflow train --config configs/quickstart_grouped.py --workdir W`
(the `train` command dispatches here when `config.grouped.enabled` is True).

    W/stage1/          stage 1: the dense base, ordinary trainer, `grouped.stage1_steps` steps
    W/prune/           pruning: memory_bank.json (every structure scored, saved each round),
                       result.json (per group: t range, budget, chosen structure, FLOPs, proxy)
    W/group_<i>/       stage 2: group i's sliced sub-model fine-tuned on t inside group i
    W/grouped.json     edges, budgets, structures, FLOPs per group and per sampled image
    W/eval.json        FD / class accuracy of the grouped sampler (when eval.at_end)

Every stage resumes: stage 1 and each group from their orbax checkpoints (a finished stage leaves
a DONE file and is skipped), pruning from its memory bank (finished groups are kept, an
interrupted group continues after its last saved round).
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from adaflow.config import require
from adaflow import data as data_lib
from adaflow import flow
from adaflow import methods
from adaflow import storage
from adaflow.compose.generator import ComposedGenerator
from adaflow.eval.classifier import writable_cache_dir
from adaflow.eval.generate import evaluate_generator
from adaflow.models.dit import dit_from_config
from adaflow.models.grouped import group_key
from adaflow.objectives.flow_loss import regression_loss
from adaflow.parallel import make_mesh
from adaflow.parallel.host import agree, is_writer
from adaflow.pipelines.stages import run_stage, stage_config, stage_done, train_stage
from adaflow.prune import budget as budget_lib
from adaflow.prune import importance as importance_lib
from adaflow.prune.groups import group_edges
from adaflow.prune.search import (PROPOSERS, MemoryBank, Proposer, ProxyEvaluator, SearchSpace, make_proposer,
                                  search_group)
from adaflow.prune.slicing import Structure, slice_params
from adaflow.train.loop import config_of, load_params, workdir_lock


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    print(f"[adaflow] {msg}", flush=True)


# ---- config ---------------------------------------------------------------------------------
def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def validate_grouped(config) -> None:
  """Checks `config.grouped` (run_grouped and the compose recipe call this); ValueError naming the field."""
  g = config.grouped
  budget_lib.check_budget_args(g.num_groups, g.k, g.largest)
  r = tuple(g.snr_range_db)
  require(len(r) == 2 and float(r[0]) < float(r[1]), "grouped.snr_range_db",
          f"must be (low_db, high_db) with low < high, got {r}")
  for f, lo in (("stage1_steps", 1), ("stage2_steps", 0), ("rounds", 1), ("proposals_per_round", 1),
                ("proxy_samples", 1), ("proxy_finetune_steps", 0), ("importance_batches", 1), ("mlp_granularity", 1),
                ("stage2_warmup_steps", 0)):
    require(_is_int(g[f]) and g[f] >= lo, f"grouped.{f}", f"must be an integer >= {lo}, got {g[f]!r}")
  require(g.importance in importance_lib.METHODS, "grouped.importance",
          f"must be one of {importance_lib.METHODS}, got {g.importance!r}")
  require(g.proposer in PROPOSERS, "grouped.proposer", f"must be one of {sorted(PROPOSERS)}, got {g.proposer!r}")
  require(g.stage2_lr > 0, "grouped.stage2_lr", f"must be positive, got {g.stage2_lr}")
  require(g.proxy_finetune_steps == 0 or g.proxy_lr > 0, "grouped.proxy_lr",
          f"must be positive when grouped.proxy_finetune_steps > 0, got {g.proxy_lr}")
  require(not config.train.batch_size < g.num_groups, "train.batch_size",
          f"{config.train.batch_size} < grouped.num_groups {g.num_groups}")



def stage1_config(config) -> ml_collections.ConfigDict:
  g = config.grouped
  c = config.copy_and_resolve_references()
  c.name = f"{config.name}_stage1"
  c.train.steps = int(g.stage1_steps)
  c.eval.at_end = bool(g.eval_stage1)
  return c


def group_config(config, i: int, structure: Structure, t_range: tuple[float, float]) -> ml_collections.ConfigDict:
  """Stage-2 config of group i: its pruned blocks, its time range, the stage-2 schedule."""
  g = config.grouped
  c = stage_config(config, f"group{i}", g.stage2_steps, lr=g.stage2_lr, warmup_steps=g.stage2_warmup_steps)
  c.objective = "grouped_finetune"
  c.model.blocks = [[s.num_heads, s.mlp_dim] for s in structure.block_specs()]
  c.grouped.group = i
  c.grouped.t_range = (float(t_range[0]), float(t_range[1]))
  return c


# ---- pruning --------------------------------------------------------------------------------
def prune(config, base_params: Any, out_dir: str, proposer: Optional[Proposer] = None, log=_log) -> dict:
  """Pruning pass for every group (see adaflow.prune.search); writes memory_bank.json and
  result.json under `out_dir` and returns the result dict (a finished pass's result.json is read back)."""
  result_path = os.path.join(out_dir, "result.json")
  if agree(storage.exists(result_path)):   # one decision for all processes (pruning is collective)
    log("pruning already finished (result.json); skipping")
    return storage.read_json(result_path)
  g = config.grouped
  info = data_lib.get_info(config.data)
  base = dit_from_config(config.model, info.image_shape, info.num_classes)
  interpolant = flow.make_interpolant(config.flow)
  edges = group_edges(g.num_groups, interpolant, tuple(g.snr_range_db))
  base_f = budget_lib.model_flops(base)
  budgets = budget_lib.group_budgets(g.num_groups, g.k, base_f, g.largest)
  proposer = proposer or make_proposer(g.proposer)
  storage.makedirs(out_dir)
  bank_path = os.path.join(out_dir, "memory_bank.json")
  bank = MemoryBank.load(bank_path)
  x_all, y_all = data_lib.load_arrays(config.data, int(g.proxy_samples), seed=int(config.seed) + 7919)
  train_batches = data_lib.make_train_batches(config.data, global_batch_size=min(int(config.train.batch_size), 64),
                                              seed=int(config.seed) + 104729)
  groups = []
  for i, (lo, hi) in enumerate(flow.TimePartition(tuple(edges)).ranges):
    key = jax.random.PRNGKey(int(config.seed) * 1000 + i)
    k_noise, k_t, k_imp = jax.random.split(key, 3)
    noise = np.asarray(jax.random.normal(k_noise, x_all.shape, jnp.float32))
    t = np.asarray(flow.sample_t_in_range(k_t, x_all.shape[0], lo, hi, config.flow))
    heldout = (jnp.asarray(x_all), jnp.asarray(y_all), jnp.asarray(noise), jnp.asarray(t))

    def in_range_batch(step: int, lo=lo, hi=hi, i=i) -> tuple:
      b = train_batches[step]
      kk = jax.random.fold_in(jax.random.PRNGKey(int(config.seed) + 31 * i + 1), step)
      k1, k2 = jax.random.split(kk)
      n = b["image"].shape[0]
      return (jnp.asarray(b["image"]), jnp.asarray(b["label"]), jax.random.normal(k1, b["image"].shape),
              flow.sample_t_in_range(k2, n, lo, hi, config.flow))

    if g.importance == "magnitude":
      imp = importance_lib.magnitude(base_params, base)
    else:
      def loss_fn(params, batch):
        x, y, nz, tt = batch
        return regression_loss(functools.partial(base.apply, params), interpolant, x, nz, tt, y)
      imp = importance_lib.taylor(base_params, base, loss_fn, [in_range_batch(s) for s in range(g.importance_batches)])
    space = SearchSpace(base, imp, float(budgets[i]), int(g.mlp_granularity), bool(g.allow_block_drop))
    proxy = ProxyEvaluator(base, interpolant, base_params, heldout, int(g.proxy_finetune_steps),
                           lambda s: in_range_batch(1000 + s), float(g.proxy_lr))
    log(f"pruning group {i}: t in [{lo:.3f}, {hi:.3f}), budget {budgets[i] / base_f:.3f} F, "
        f"proposer {proposer.name}, rounds {g.rounds} x {g.proposals_per_round}")
    best = search_group(space, proposer, proxy, bank, i, int(g.rounds), int(g.proposals_per_round),
                        seed=int(g.search_seed), on_round=lambda b: b.save(bank_path), log=log)
    bank.save(bank_path)
    log(f"group {i}: chose counts {best.structure.counts()} ({best.flops / base_f:.3f} F, proxy {best.score:.5f})")
    groups.append({"group": i, "t_range": [lo, hi], "budget": float(budgets[i]), "budget_fraction": float(budgets[i] / base_f),
                   "flops": best.flops, "flops_fraction": best.flops / base_f, "proxy": best.score,
                   "counts": best.structure.counts(), "structure": best.structure.to_json()})
  result = {"edges": [float(e) for e in edges], "base_flops": int(base_f), "k": float(g.k), "largest": g.largest,
            "proposer": proposer.name, "importance": g.importance, "groups": groups}
  if is_writer():   # the other processes computed the same; one writes
    storage.write_json(result_path, result, indent=1)
  return result


# ---- sampling cost --------------------------------------------------------------------------
def sampling_summary(config, result: dict) -> dict:
  """FLOPs per sampled image of the grouped model vs the dense base (same steps, method, CFG), each
  counted on the grid it samples with (adaflow.compose.flops): the grouped sampler meets the group
  edges by `sample.edges` ("snap", the default, moves grid points onto them and keeps the step
  count; "insert" adds them as steps)."""
  info = data_lib.get_info(config.data)
  base = dit_from_config(config.model, info.image_shape, info.num_classes)
  s = config.sample
  generator = grouped_generator(config, result)
  runs = generator.runs(generator.sampling_grid(int(s.steps)))
  steps_g = [run.start[0] for run in runs for _ in range(len(run.grid) - 1)]
  grouped = generator.sampling_flops(None, int(s.steps), s.method, float(s.cfg_scale))
  dense = budget_lib.sampling_flops([budget_lib.model_flops(base)], [0] * int(s.steps), s.method, float(s.cfg_scale))
  return {"sampling_flops_per_image": grouped, "dense_sampling_flops_per_image": dense,
          "flops_fraction": grouped / dense, "steps_per_group": [steps_g.count(i) for i in range(len(result["groups"]))]}


def grouped_generator(config, result: dict) -> ComposedGenerator:
  """The composed generator with the pruning result's timestep groups (params {group_i: ...})."""
  info = data_lib.get_info(config.data)
  blocks = [Structure.from_json(gr["structure"]).block_specs() for gr in result["groups"]]
  return ComposedGenerator(methods.composed_config(config, groups=(blocks, result["edges"])), info)


# ---- the driver -----------------------------------------------------------------------------
def run_grouped(config, workdir: str, proposer: Optional[Proposer] = None, log=_log) -> dict:
  """Stage 1 -> pruning -> stage 2 per group -> evaluation; resumable. Returns the summary."""
  validate_grouped(config)
  info = data_lib.get_info(config.data)
  methods.validate(config, info, num_devices=jax.device_count(), num_processes=jax.process_count())
  storage.check_writable(workdir, "--workdir")   # creates it; a bad path or bucket fails before stage 1
  # The final evaluation's cache is checked before stage 1: an unwritable one failed after every stage.
  cache = writable_cache_dir(config, workdir) if config.eval.at_end else None
  # Held through every stage and the pruning pass (each stage's training locks its own directory too).
  with workdir_lock(workdir):
    return _run_stages(config, workdir, info, cache, proposer, log)


def _run_stages(config, workdir: str, info, cache: Optional[str], proposer: Optional[Proposer], log) -> dict:
  """`run_grouped` after its checks, the workdir locked."""
  g = config.grouped
  if is_writer():   # the other processes computed the same; one writes
    storage.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  log(f"===== stage 1/3: dense base, {g.stage1_steps} steps -> {os.path.join(workdir, 'stage1')} =====")
  s1 = run_stage(workdir, "stage1", lambda d: train_stage(stage1_config(config), d), {"steps": int(g.stage1_steps)},
                 log=log)
  base_params = load_params(s1)

  pdir = os.path.join(workdir, "prune")
  log(f"===== stage 2/3 (pruning): N={g.num_groups}, k={g.k}, largest={g.largest} -> {pdir} =====")
  result = prune(config, base_params, pdir, proposer=proposer, log=log)

  base_model = dit_from_config(config.model, info.image_shape, info.num_classes)
  params = {}
  log(f"===== stage 3/3: fine-tune each group, {g.stage2_steps} steps per group =====")
  for gr in result["groups"]:
    i = gr["group"]
    structure = Structure.from_json(gr["structure"])
    sliced = slice_params(base_params, base_model, structure)
    gdir = os.path.join(workdir, f"group_{i}")
    if int(g.stage2_steps) == 0:
      log(f"group {i}: stage2_steps = 0, using the sliced weights (pruning only)")
      params[group_key(i)] = sliced
      continue
    log(f"----- group {i}: t in [{gr['t_range'][0]:.3f}, {gr['t_range'][1]:.3f}), counts {gr['counts']}, "
        f"{gr['flops_fraction']:.3f} F -> {gdir} -----")
    run_stage(workdir, f"group_{i}",
              lambda d: train_stage(group_config(config, i, structure, tuple(gr["t_range"])), d, init_params=sliced),
              {"steps": int(g.stage2_steps)}, log=log)
    params[group_key(i)] = load_params(gdir)

  summary = {"edges": result["edges"], "groups": [{k: v for k, v in gr.items() if k != "structure"}
                                                   for gr in result["groups"]],
             **sampling_summary(config, result)}
  if is_writer():   # the other processes computed the same; one writes
    storage.write_json(os.path.join(workdir, "grouped.json"), summary, indent=1)
  log(f"grouped model: {summary['flops_fraction']:.3f} of the dense sampling FLOPs "
      f"(steps per group {summary['steps_per_group']})")
  if config.eval.at_end:
    res = evaluate_generator(grouped_generator(config, result), params, config, make_mesh(config.mesh),
                             cache, log=log)
    res.update(flops_fraction=summary["flops_fraction"], sampling_flops_per_image=summary["sampling_flops_per_image"])
    if is_writer():   # the other processes computed the same; one writes
      storage.write_json(os.path.join(workdir, "eval.json"), res, indent=2)
    log("grouped eval: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()))
    summary["eval"] = res
  if is_writer():   # the job's end, as `train` marks a finished run (tpu/resume_after_preemption.sh waits for it)
    storage.write_json(os.path.join(workdir, "train_complete.json"), {"time": time.time()})
  return summary


# ---- loading a finished grouped workdir (sample / eval) ----------------------------------
def is_grouped_workdir(workdir: str) -> bool:
  """True for a `run_grouped` workdir (stage1/, prune/result.json, group_i/)."""
  return storage.exists(os.path.join(workdir, "prune", "result.json")) and storage.isdir(os.path.join(workdir, "stage1"))


def load_grouped(workdir: str, config: Optional[ml_collections.ConfigDict] = None):
  """(ComposedGenerator, params {group_i: {'params': ...}}, config) of a finished grouped run.

  The config is the one stored with stage 1's checkpoint (it carries `config.grouped`) unless
  `config` overrides it (e.g. other sampling settings). Groups whose stage 2 has not finished are
  an error, except with `grouped.stage2_steps = 0` (pruning only: the sliced stage-1 weights).
  """
  if not is_grouped_workdir(workdir):
    raise ValueError(f"{workdir} is not a train-then-prune workdir (needs stage1/ and prune/result.json; "
                     f"run `adaflow train --config <grouped config> --workdir {workdir}` to finish it)")
  stage1 = os.path.join(workdir, "stage1")
  config = config if config is not None else config_of(stage1)
  result = storage.read_json(os.path.join(workdir, "prune", "result.json"))
  generator = grouped_generator(config, result)
  base = None
  params = {}
  for gr in result["groups"]:
    i = gr["group"]
    gdir = os.path.join(workdir, f"group_{i}")
    if stage_done(gdir):
      params[group_key(i)] = load_params(gdir)
    elif int(config.grouped.stage2_steps) == 0:
      base = load_params(stage1) if base is None else base
      params[group_key(i)] = slice_params(base, dit_from_config(config.model, generator.info.image_shape,
                                                                generator.info.num_classes),
                                          Structure.from_json(gr["structure"]))
    else:
      raise ValueError(f"group {i} of {workdir} has not finished stage 2 ({gdir} has no DONE marker); "
                       f"re-run `adaflow train` on this workdir to resume it")
  generator.check_params(params)
  return generator, params, config
