"""The training loop, written once for every objective, and rebuilding a run from its workdir
(`load_trainer_and_params`, `load_params`).

`train` reads top to bottom: setup (everything that can be wrong fails before anything compiles)
-> state (the latest readable checkpoint, or a new one) -> per step: batch -> jitted step -> hooks
(hooks.py: metrics and the NaN check, checkpoints and preemption, FID, sample grids) -> end (final
samples and evaluation, train_complete.json).

The input position is the step itself (batches are a pure function of the step), so a resumed run
sees exactly the batches and random keys of an uninterrupted run. SIGTERM / SIGINT: a checkpoint
at the next step boundary (the same step on every process), then `train` returns normally. A
non-finite update is dropped in the compiled step; train.nan_policy="stop" then raises
NonFiniteLossError naming the last good checkpoint. A full disk is a CheckpointWriteError. Each
process feeds its own rows of the global batch, put in single-process order, so losses do not
depend on the process count (tests/test_reliability.py, tests/test_multiprocess.py).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from adaflow import config as config_lib
from adaflow import data as data_lib
from adaflow import methods
from adaflow import storage
from adaflow.config_defaults import merged_config
from adaflow.data.prefetch import Prefetcher
from adaflow.parallel import batch_sharding, make_mesh, replicated
from adaflow.parallel.host import agree, to_host
from adaflow.train import checkpoint as ckpt
from adaflow.train import diagnostics
from adaflow.train.hooks import Checkpoints, FinalEvaluation, Metrics, NonFiniteLossError, PreemptionGuard, SampleGrids
from adaflow.train.metrics_log import MetricWriter, parse_writers, progress
from adaflow.train.periodic_fid import PeriodicFID
from adaflow.train.optim import learning_rate_schedule, make_optimizer
from adaflow.train.sharded_state import init_state, state_shardings
from adaflow.train.step import make_train_step

__all__ = ["NonFiniteLossError", "PreemptionGuard", "Trainer", "config_of", "load_params",
           "load_trainer_and_params", "train"]


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(f"[adaflow] {msg}")


def _process_order_permutation(sharding, global_batch: int) -> Optional[np.ndarray]:
  """Row permutation that puts a multi-process global batch into single-process order.

  `make_train_batches` gives process p the rows p, p+P, p+2P, ... of the step's global batch;
  `make_array_from_process_local_data` stacks them onto p's devices, i.e. the block
  [p*L, (p+1)*L) with L = B/P. Returns perm with canonical[i] = stacked[perm[i]] (None for one
  process, or if the processes' rows are not contiguous blocks in process order).
  """
  P = jax.process_count()
  if P == 1:
    return None
  L = global_batch // P
  owned = {}
  for d, idx in sharding.devices_indices_map((global_batch,)).items():
    owned.setdefault(d.process_index, set()).update(range(*idx[0].indices(global_batch)))
  if any(sorted(owned.get(p, ())) != list(range(p * L, (p + 1) * L)) for p in range(P)):
    return None
  i = np.arange(global_batch)
  return (i % P) * L + i // P


class Trainer:
  """Holds what a run needs: config, dataset info, objective, mesh, optimizer and shardings."""

  def __init__(self, config, workdir: str, log=_log, training: bool = True):
    self.config, self.workdir, self.log = config, workdir, log
    methods.validate(config)
    self.info = data_lib.get_info(config.data)
    methods.validate(config, self.info, num_devices=jax.device_count(), num_processes=jax.process_count(),
                     training=training)
    self.objective = methods.build_objective(config, self.info, load_run=load_trainer_and_params, workdir=workdir)
    self.mesh = make_mesh(config.mesh)
    self.tx = make_optimizer(config.train)
    self.lr_schedule = learning_rate_schedule(config.train)
    self.root_rng = jax.random.PRNGKey(config.seed)
    self.abstract_state, self.shardings = state_shardings(self.objective, self.tx, self.mesh, self.root_rng)
    self.batch_sharding = batch_sharding(self.mesh)
    self._perm = _process_order_permutation(self.batch_sharding, config.train.batch_size) if training else None
    self._reorder = None
    if self._perm is not None:
      perm = jnp.asarray(self._perm)
      self._reorder = jax.jit(lambda b: jax.tree_util.tree_map(lambda x: jnp.take(x, perm, axis=0), b),
                              out_shardings=self.batch_sharding)

  def initial_state(self, manager, init_params: Optional[Any] = None):
    """Latest checkpoint if the workdir has one, else a fresh (or `init_params`) state."""
    ckpt.check_model_matches(manager, self.abstract_state)   # another model's workdir: stop, change nothing
    abstract = ckpt.abstract_with_shardings(self.abstract_state, self.shardings)
    state, meta, step = ckpt.restore_latest(manager, abstract, log=self.log)
    if state is not None:
      self.log(f"resumed from {ckpt.checkpoint_dir(self.workdir)}/{step}")
      return state
    if init_params is not None:
      init_params = self.objective.merge_init_params(init_params, self.root_rng)  # e.g. add routers
      mismatch = ckpt.param_mismatch(init_params, self.abstract_state.params)
      if mismatch:   # would otherwise surface as a Flax shape error when the first step is traced
        raise ValueError(f"--init: its parameters are not this config's model ({mismatch}); initialise from a "
                         "run with the same config.model, data shape and method, or drop --init")
    return init_state(self.objective, self.tx, self.mesh, self.root_rng, self.shardings, params=init_params)

  def jitted_step(self, objective=None, donate: bool = True):
    """The jitted train step of `objective` (default: the run's), state buffers donated."""
    tc = self.config.train
    step = make_train_step(objective or self.objective, self.tx, tc.ema_decay, self.lr_schedule,
                           debug_nan_step=int(tc.debug_nan_step))
    return jax.jit(step, in_shardings=(self.shardings, self.batch_sharding),
                   out_shardings=(self.shardings, replicated(self.mesh)), donate_argnums=(0,) if donate else ())

  def flops_counting_step(self):
    """The train step with the DiT blocks unrolled (`model.scan_blocks=False`), lowered for its
    FLOPs and never compiled: XLA's cost analysis counts a scanned (while-loop) body once, so the
    scanned step's own analysis would report about one block. None where no DiT is scanned."""
    if not self.config.model.scan_blocks or not methods.is_dit_family(self.config):
      return None
    c = self.config.copy_and_resolve_references()
    c.model.scan_blocks = False
    return self.jitted_step(methods.build_objective(c, self.info, load_run=load_trainer_and_params,
                                                    workdir=self.workdir), donate=False)

  def global_batch(self, local: dict) -> dict:
    """This process's rows (`make_train_batches(..., process_index, process_count)[step]`) ->
    global arrays [B, ...] sharded on ('data', 'fsdp'), in single-process row order."""
    out = {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v)) for k, v in local.items()}
    return out if self._reorder is None else self._reorder(out)

  def generator(self):
    """The run's sampler: its objective's (the composed generator for the DiT family); kept with
    the objective, so its compiled sampling programs are reused."""
    return self.objective.sampler

  def meta(self) -> dict:
    return {"config": json.loads(self.config.to_json_best_effort()), "image_shape": list(self.info.image_shape),
            "num_classes": self.info.num_classes}


def train(config, workdir: str, init_params: Optional[Any] = None, log=_log) -> Any:
  """Runs (or resumes) training to `config.train.steps`; returns the final TrainState."""
  # ---- Setup: everything that can be wrong fails here, before anything compiles ----
  tr = Trainer(config, workdir, log)   # validates the config; traces shapes only
  tc = config.train
  # Before the first compilation, so that the train step is cached on disk.
  diagnostics.enable_compilation_cache(tc.compilation_cache_dir, tc.compilation_cache_min_compile_secs)
  parse_writers(tc.writers)   # a selected writer that is not installed fails here
  fid = PeriodicFID(config, workdir, tr.mesh, log)   # eval.fid_every: weights / reference checked now
  ckpt.check_writable(workdir)   # creates the workdir; a bad path or bucket fails here
  with workdir_lock(workdir):   # a second run started in it fails here
    return _train(tr, fid, init_params)


@contextlib.contextmanager
def workdir_lock(workdir: str):
  """Process 0 holds `workdir`'s lock (`storage.exclusive_use`) while the block runs. When another
  run holds it, every process raises process 0's error here: the others would otherwise go on alone
  to their first collective. `train` and the multi-stage pipelines (whose stages each lock their own
  directory) take it."""
  with contextlib.ExitStack() as held:
    refused = None
    if jax.process_index() == 0:
      try:
        held.enter_context(storage.exclusive_use(workdir))
      except ValueError as e:
        refused = e
    if agree(refused is not None):
      raise refused or ValueError(f"--workdir {workdir} is in use by another run (process 0's error names it)")
    yield


def _train(tr: Trainer, fid: PeriodicFID, init_params: Optional[Any]) -> Any:
  """`train` after its checks, the workdir locked: restore or initialise, loop, finish."""
  config, workdir, log, tc = tr.config, tr.workdir, tr.log, tr.config.train
  storage.makedirs(workdir)
  manager = ckpt.make_manager(workdir, max_to_keep=tc.keep_checkpoints,
                              keep_every=tc.keep_every)   # + milestones (multiples of keep_every)

  # ---- State: the latest checkpoint or a fresh one; its step is also the input position ----
  ckpt.check_space(manager, None, tr.abstract_state)   # a disk that cannot hold one checkpoint fails here
  state = tr.initial_state(manager, init_params)   # a workdir of another model fails here, untouched
  if jax.process_index() == 0:
    storage.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  start = int(jax.device_get(state.step))
  complete_path = os.path.join(workdir, "train_complete.json")
  if start < tc.steps and jax.process_index() == 0:
    storage.remove(complete_path)   # a shorter earlier run's: this run is not complete until it is rewritten
  batches = data_lib.make_train_batches(config.data, global_batch_size=tc.batch_size, seed=config.seed,
                                        process_index=jax.process_index(), process_count=jax.process_count())
  # Host input overlaps the device step: batches[step + 1 ..] are built on threads (same batches).
  batches = Prefetcher(batches, start=start, stop=tc.steps, depth=config.data.prefetch)
  jitted = tr.jitted_step()   # compiled at the first step
  prof = diagnostics.ProfileWindow(os.path.join(workdir, "profile"), start, tc.profile_start, tc.profile_steps)
  writer = MetricWriter(workdir, writers=tc.writers, run_config=json.loads(config.to_json_best_effort()),
                        wandb_project=tc.wandb_project, name=config.name)
  # Closed however training ends; an error's own message wins over a close that fails too (full disk).
  with writer:
    dropped = writer.drop_after(start)
    if dropped:
      log(f"metrics.jsonl: dropped {dropped} rows logged after step {start} (they are recomputed now)")
    fid.start(start, state, tr.generator(), writer)   # the FID of `start` if a stop cut it off

    # ---- Hooks: called in this order after every step (hooks.py) ----
    pbar = progress(tc.steps, start, enabled=jax.process_index() == 0)   # plain lines when stderr is a log file
    guard = PreemptionGuard(sync_every=tc.preemption_sync_every)
    metrics_hook = Metrics(writer, pbar, tc, start, manager, workdir, log)
    run_hooks = [metrics_hook, Checkpoints(manager, tr.meta(), tc, guard, metrics_hook), fid,
                 SampleGrids(tr, log), FinalEvaluation(tr, writer, log)]

    # ---- Loop ----
    step_fn, stopped = None, False
    # Leaving the block (end, stop, error) restores the signal handlers, joins the input threads and
    # ends a profiler trace.
    with guard, batches, prof:
      log(f"{config.name}: {tr.info.image_shape} {tr.info.num_classes} classes, "
          f"{config_lib.num_params(state.params) / 1e6:.2f}M params, mesh {dict(tr.mesh.shape)}, "
          + (f"steps {start} -> {tc.steps}" if start < tc.steps else
             f"at step {start}, train.steps={tc.steps} reached: no training (raise it to train on)"))
      log(tr.objective.describe_compute())
      for step in range(start, tc.steps):
        batch = tr.global_batch(batches[step])
        if step_fn is None:   # one compilation, which also gives the FLOPs per step
          step_fn, flops = diagnostics.compile_step(jitted, state, batch, flops_from=tr.flops_counting_step())
          metrics_hook.compiled(flops)
        prof.before(step)
        state, metrics = step_fn(state, batch)
        prof.after(step, (state, metrics))
        # `any` stops at the first hook that asks to stop: the later ones skip this step.
        if any(h.after_step(step + 1, state, metrics) for h in run_hooks):
          stopped = True
          break
      ckpt.wait(manager)   # the last checkpoint is written under the guard: a signal cannot cut it short
      # A request after the last check (the last steps never stop early) is honoured here: the final
      # checkpoint is saved; final samples, evaluation and train_complete.json wait for the rerun.
      stopped = stopped or (start < tc.steps and guard.pending())

    # ---- End: a stopped run says how to resume; a finished one gets its final samples and eval ----
    pbar.close()
    final_step = int(jax.device_get(state.step))
    if not stopped:
      writer.flush()
      for h in run_hooks:
        h.at_end(final_step, state)
      if jax.process_index() == 0 and final_step >= tc.steps:
        # Written last, and never on a stop: a watcher (tpu/resume_after_preemption.sh) relaunches
        # until it appears.
        storage.write_json(complete_path, {"step": final_step, "time": time.time()})
  manager.close()
  if stopped:
    log(f"stopping on {guard.requested} after step {final_step}: checkpoint saved to "
        f"{ckpt.checkpoint_dir(workdir)}/{final_step}; run the same command again to resume")
  return state


# ---- rebuilding a trainer and its parameters from a workdir (sample / eval / fine-tuning) ----
def config_of(workdir: str) -> ml_collections.ConfigDict:
  """The config stored with the latest checkpoint of `workdir`, written over `base_config()`: a run
  saved before a field existed gets that field's default."""
  meta, _ = ckpt.restore_meta(workdir)
  return merged_config(meta["config"])


def load_trainer_and_params(workdir: str, config: Optional[ml_collections.ConfigDict] = None, ema: bool = True,
                            step: Optional[int] = None):
  """(Trainer, params, step): the latest readable checkpoint's EMA (or raw) params on this mesh, or
  those of checkpoint `step` (ValueError naming the steps there are when it is gone).

  `config` overrides the stored one (e.g. other sampling settings); the model fields must agree
  with the checkpoint, which orbax checks shape by shape.
  """
  config = config if config is not None else config_of(workdir)
  tr = Trainer(config, workdir, training=False)   # sampling / evaluation / --init: any device count
  manager = ckpt.make_manager(workdir, async_save=False)
  ckpt.check_model_matches(manager, tr.abstract_state)   # names the mismatch instead of "no readable checkpoint"
  abstract = ckpt.abstract_with_shardings(tr.abstract_state, tr.shardings)
  if step is not None and step not in manager.all_steps():
    raise ValueError(f"{ckpt.checkpoint_dir(workdir)} has no checkpoint at step {step} (it has steps "
                     f"{sorted(manager.all_steps())})")
  state, _, step = ckpt.restore_latest(manager, abstract, log=tr.log, step=step)
  if state is None:
    raise ValueError(f"no readable checkpoint under {ckpt.checkpoint_dir(workdir)}")
  return tr, (state.ema_params if ema else state.params), step


def load_params(workdir: str, ema: bool = True) -> Any:
  """EMA params of the latest checkpoint in `workdir` as host arrays (for `--init`)."""
  _, params, _ = load_trainer_and_params(workdir, ema=ema)
  return to_host(params)    # fsdp-sharded params may span processes
