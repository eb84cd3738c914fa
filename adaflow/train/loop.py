"""The training loop, written once for every objective (train layer: the loop, its state and
checkpoints, and rebuilding a run from its workdir: `load_trainer_and_params`, `load_params`).

    validate config -> dataset info -> objective -> mesh -> sharded state (restore or init)
    for step in [start, steps): batch = data[step] -> jitted step -> log / checkpoint / samples
    final checkpoint, sample grid, evaluation

Resuming: the latest readable checkpoint in `<workdir>/checkpoints` is restored automatically.
The input position is the step itself (batches are a pure function of the step), so a resumed
run sees exactly the batches and random keys of an uninterrupted run: the input-pipeline state
*is* the checkpointed `state.step`.

Reliability (see tests/test_reliability.py, tests/test_multiprocess.py):
  * SIGTERM / SIGINT: the current step finishes, a checkpoint is saved at that step boundary,
    `train` logs where it is and returns normally (the CLI exits 0); rerunning resumes exactly.
    With several processes the stop is agreed on (any process's signal, or orbax's preemption
    sync point) so that all of them save the same step.
  * NaN/Inf loss or gradients: the update is dropped inside the compiled step; with
    `train.nan_policy="stop"` (default) training raises NonFiniteLossError naming the step and
    the last good checkpoint (nothing is saved after the bad step), with `"skip"` it goes on.
  * Full or unwritable disk while checkpointing: `checkpoint.CheckpointWriteError` naming the dir.
  * Several processes: each feeds its own rows of the global batch; the global batch is put in
    the order of a single-process run, so losses do not depend on the process count.

Diagnostics (adaflow/train/diagnostics.py, tests/test_diagnostics.py): the step is compiled once,
before the first step, and its XLA cost analysis gives the FLOPs per step, logged as
`tflops_per_second` and `mfu` with the metrics; `train.compilation_cache_dir` (persistent compile
cache), `train.profile_start` / `train.profile_steps` (jax.profiler trace in <workdir>/profile),
`train.keep_every` (milestone checkpoints beside the `keep_checkpoints` newest).
"""
from __future__ import annotations

import json
import os
import signal
import threading
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
from adaflow.eval.classifier import cache_dir
from adaflow.eval.generate import evaluate_generator
from adaflow.flow.driver import generate_images
from adaflow.parallel import batch_sharding, make_mesh, replicated
from adaflow.parallel.host import agree, to_host
from adaflow.parallel.precision import describe_compute_dtype
from adaflow.train import checkpoint as ckpt
from adaflow.train import diagnostics
from adaflow.train.images import save_grid
from adaflow.train.metrics_log import MetricWriter, parse_writers, progress, read_metrics
from adaflow.train.periodic_fid import PeriodicFID
from adaflow.train.optim import learning_rate_schedule, make_optimizer
from adaflow.train.sharded_state import init_state, state_shardings
from adaflow.train.step import make_train_step


def _log(msg: str) -> None:
  if jax.process_index() == 0:
    tqdm.write(f"[adaflow] {msg}")


class NonFiniteLossError(FloatingPointError):
  """Training stopped on a NaN/Inf loss (train.nan_policy="stop"); `.step`, `.last_checkpoint`."""

  def __init__(self, message: str, step: int, last_checkpoint: Optional[int]):
    super().__init__(message)
    self.step, self.last_checkpoint = step, last_checkpoint


class PreemptionGuard:
  """Turns SIGTERM/SIGINT into a stop request honoured at the next step boundary.

  Use as a context manager around the step loop (handlers are installed only in the main thread and
  restored on exit). A second SIGINT raises KeyboardInterrupt at once. `should_stop(manager, step)`
  is collective with several processes: it is True on every process when any process got a signal
  (checked every `sync_every` steps with an all-gather) or orbax reached a preemption sync point.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, sync_every: int = 1):
    self.requested: Optional[str] = None
    self.sync_every = max(int(sync_every), 1)
    self._old = {}

  def _handler(self, signum, frame):
    name = signal.Signals(signum).name
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = self.requested or name

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._old[sig] = signal.signal(sig, self._handler)
    return self

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old = {}
    return False

  def should_stop(self, manager, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested is not None
    stop = False
    if step % self.sync_every == 0:
      from jax.experimental import multihost_utils
      flags = multihost_utils.process_allgather(np.asarray(self.requested is not None, np.int32))
      stop = bool(np.max(flags))
      if stop and self.requested is None:
        self.requested = "signal on another process"
    if manager.reached_preemption(step):
      self.requested = self.requested or "preemption sync point"
      stop = True
    return stop


def _finite_mean(values) -> float:
  a = np.asarray(values, np.float64)
  a = a[np.isfinite(a)]
  return float(a.mean()) if a.size else float("nan")


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

  def __init__(self, config, workdir: str, log=_log):
    self.config, self.workdir, self.log = config, workdir, log
    methods.validate(config)
    self.info = data_lib.get_info(config.data)
    methods.validate(config, self.info, num_devices=jax.device_count(), num_processes=jax.process_count())
    self.objective = methods.build_objective(config, self.info, load_run=load_trainer_and_params, workdir=workdir)
    self.mesh = make_mesh(config.mesh)
    self.tx = make_optimizer(config.train)
    self.lr_schedule = learning_rate_schedule(config.train)
    self.root_rng = jax.random.PRNGKey(config.seed)
    self.abstract_state, self.shardings = state_shardings(self.objective, self.tx, self.mesh, self.root_rng)
    self.batch_sharding = batch_sharding(self.mesh)
    self._perm = _process_order_permutation(self.batch_sharding, config.train.batch_size)
    self._reorder = None
    if self._perm is not None:
      perm = jnp.asarray(self._perm)
      self._reorder = jax.jit(lambda b: jax.tree_util.tree_map(lambda x: jnp.take(x, perm, axis=0), b),
                              out_shardings=self.batch_sharding)

  def initial_state(self, manager, init_params: Optional[Any] = None):
    """Latest checkpoint if the workdir has one, else a fresh (or `init_params`) state."""
    abstract = ckpt.abstract_with_shardings(self.abstract_state, self.shardings)
    state, meta, step = ckpt.restore_latest(manager, abstract, log=self.log)
    if state is not None:
      self.log(f"resumed from {ckpt.checkpoint_dir(self.workdir)}/{step}")
      return state
    if init_params is not None:
      init_params = self.objective.merge_init_params(init_params, self.root_rng)  # e.g. add routers
    return init_state(self.objective, self.tx, self.mesh, self.root_rng, self.shardings, params=init_params)

  def jitted_step(self):
    step = make_train_step(self.objective, self.tx, self.config.train.ema_decay, self.lr_schedule,
                           debug_nan_step=int(self.config.train.debug_nan_step))
    return jax.jit(step, in_shardings=(self.shardings, self.batch_sharding),
                   out_shardings=(self.shardings, replicated(self.mesh)), donate_argnums=(0,))

  def flops_counting_step(self):
    """The train step with the DiT blocks unrolled (`model.scan_blocks=False`), lowered for its
    FLOPs and never compiled: XLA's cost analysis counts a scanned (while-loop) body once, so the
    scanned step's own analysis would report about one block. None where no DiT is scanned."""
    if not self.config.model.scan_blocks or not methods.is_dit_family(self.config):
      return None
    c = self.config.copy_and_resolve_references()
    c.model.scan_blocks = False
    objective = methods.build_objective(c, self.info, load_run=load_trainer_and_params, workdir=self.workdir)
    step = make_train_step(objective, self.tx, c.train.ema_decay, self.lr_schedule,
                           debug_nan_step=int(c.train.debug_nan_step))
    return jax.jit(step, in_shardings=(self.shardings, self.batch_sharding),
                   out_shardings=(self.shardings, replicated(self.mesh)))

  def global_batch(self, local: dict) -> dict:
    """This process's rows (`make_train_batches(..., process_index, process_count)[step]`) ->
    global arrays [B, ...] sharded on ('data', 'fsdp'), in single-process row order."""
    out = {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v)) for k, v in local.items()}
    return out if self._reorder is None else self._reorder(out)

  def generator(self):
    """The run's sampler: its objective's (the composed generator for the DiT family); kept with
    the objective, so its compiled sampling programs are reused."""
    return self.objective.sampler

  def sample_grid(self, params, step: int) -> str:
    s = self.config.sample
    per_class = int(self.config.train.grid_per_class)
    k = max(self.objective.num_classes, 1)
    labels = np.repeat(np.arange(k, dtype=np.int32), per_class)
    imgs = generate_images(self.generator(), params, self.mesh, jax.random.PRNGKey(7), labels, steps=s.steps,
                           method=s.method, cfg_scale=s.cfg_scale, batch_size=len(labels))
    path = os.path.join(self.workdir, "samples", f"step_{step:07d}.png")
    if jax.process_index() == 0:
      save_grid(np.clip(imgs, -1, 1), path, rows=k if self.objective.num_classes else 0,
                upscale=max(1, 64 // self.info.image_shape[0]))
    return path

  def meta(self) -> dict:
    return {"config": json.loads(self.config.to_json_best_effort()), "image_shape": list(self.info.image_shape),
            "num_classes": self.info.num_classes}


def train(config, workdir: str, init_params: Optional[Any] = None, log=_log) -> Any:
  """Runs (or resumes) training to `config.train.steps`; returns the final TrainState."""
  tr = Trainer(config, workdir, log)
  tc = config.train
  # Before anything compiles (Trainer only traces shapes): the train step is then cached on disk.
  diagnostics.enable_compilation_cache(tc.compilation_cache_dir,
                                       tc.compilation_cache_min_compile_secs)
  nan_policy = tc.nan_policy
  parse_writers(tc.writers)   # a selected writer that is not installed fails before compiling
  periodic_fid = PeriodicFID(config, workdir, tr.mesh, log)   # eval.fid_every: weights / reference checked now
  ckpt.check_writable(workdir)   # creates the workdir; a bad path or bucket fails here, before compiling
  storage.makedirs(workdir)
  if jax.process_index() == 0:
    storage.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))
  manager = ckpt.make_manager(workdir, max_to_keep=tc.keep_checkpoints,
                              keep_every=tc.keep_every)   # + milestones (multiples of keep_every)
  state = tr.initial_state(manager, init_params)
  start = int(jax.device_get(state.step))
  batches = data_lib.make_train_batches(config.data, global_batch_size=tc.batch_size, seed=config.seed,
                                        process_index=jax.process_index(), process_count=jax.process_count())
  # Host input overlaps the device step: batches[step + 1 ..] are built on threads (same batches).
  batches = Prefetcher(batches, start=start, stop=tc.steps, depth=config.data.prefetch)
  jitted, step_fn, flops = tr.jitted_step(), None, None   # compiled at the first step (diagnostics.compile_step)
  peak = diagnostics.peak_tflops_per_device(override=tc.peak_tflops_per_device)
  prof = diagnostics.ProfileWindow(os.path.join(workdir, "profile"), start, tc.profile_start,
                                   tc.profile_steps)
  writer = MetricWriter(workdir, writers=tc.writers, run_config=json.loads(config.to_json_best_effort()),
                        wandb_project=tc.wandb_project, name=config.name)
  dropped = writer.drop_after(start)
  if dropped:
    tr.log(f"metrics.jsonl: dropped {dropped} rows logged after step {start} (they are recomputed now)")
  n_params = config_lib.num_params(state.params)

  def fid_at(step: int) -> None:
    """eval.fid_every: FID of the EMA params at `step`, one metrics row of kind "fid"."""
    res = periodic_fid(tr.generator(), state.ema_params, step)
    writer.write(step, res, kind="fid")
    writer.flush()
    log(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items()))

  # A run stopped after the checkpoint at `start` but before that step's FID was logged: compute
  # it now (process 0's metrics decide; earlier FIDs are kept, never recomputed).
  if periodic_fid.due(start) and agree(not any(r["step"] == start for r in read_metrics(workdir, "fid"))):
    fid_at(start)

  pbar = progress(tc.steps, start, enabled=jax.process_index() == 0)   # plain lines when stderr is a log file

  def check_finite(flag, at_step: int) -> None:
    """nan_policy="stop": raise if the update at state.step == at_step was non-finite."""
    if nan_policy == "stop" and float(jax.device_get(flag)) > 0:
      ckpt.wait(manager)
      last = manager.latest_step()
      writer.flush()
      where = f"{ckpt.checkpoint_dir(workdir)}/{last}" if last is not None else "none (no checkpoint was saved)"
      raise NonFiniteLossError(
          f"non-finite loss or gradients at step {at_step} (update {at_step + 1}); training stopped and the "
          f"update was not applied. Last good checkpoint: {where}. Lower train.lr / raise train.warmup_steps, "
          f"or set train.nan_policy='skip' to skip such updates", step=at_step, last_checkpoint=last)

  pending, t_last, n_last, prev_flag = [], time.time(), start, None
  guard = PreemptionGuard(sync_every=tc.preemption_sync_every)
  with guard, batches, prof:   # leaving it (end, preemption, error) joins the threads, ends a trace
    log(f"{config.name}: {tr.info.image_shape} {tr.info.num_classes} classes, "
        f"{n_params / 1e6:.2f}M params, mesh {dict(tr.mesh.shape)}, steps {start} -> {tc.steps}")
    log(describe_compute_dtype(config.model))
    for step in range(start, tc.steps):
      batch = tr.global_batch(batches[step])
      if step_fn is None:                        # one compilation, which also gives the FLOPs per step
        step_fn, flops = diagnostics.compile_step(jitted, state, batch, flops_from=tr.flops_counting_step())
        log(diagnostics.describe_flops(flops, peak, jax.device_count()))
        t_last = time.time()                     # throughput is measured without the compilation
      prof.before(step)
      state, metrics = step_fn(state, batch)
      prof.after(step, (state, metrics))
      if prev_flag is not None:
        check_finite(prev_flag, step - 1)        # one step behind: keeps the device queue full
      prev_flag = metrics["nonfinite"]
      pending.append(metrics)
      done = step + 1
      if done % tc.log_every == 0 or done == tc.steps:
        host = jax.device_get(pending)
        mean = {k: _finite_mean([m[k] for m in host]) for k in host[0]}
        mean["nonfinite"] = float(np.sum([m["nonfinite"] for m in host]))
        if mean["nonfinite"] and nan_policy == "skip":
          log(f"skipped {int(mean['nonfinite'])} non-finite update(s) in steps {n_last}..{done - 1}")
        now = time.time()
        mean["images_per_second"] = (done - n_last) * tc.batch_size / max(now - t_last, 1e-9)
        mean.update(diagnostics.throughput_metrics(flops, done - n_last, now - t_last, peak, jax.device_count()))
        t_last, n_last, pending = now, done, []
        writer.write(done, mean)
        pbar.set_postfix(loss=f"{mean['loss']:.4f}", img_s=f"{mean['images_per_second']:.0f}")
      pbar.update(1)
      preempt = guard.should_stop(manager, done) and done != tc.steps
      if done % tc.ckpt_every == 0 or done == tc.steps or preempt:
        check_finite(prev_flag, step)            # never checkpoint past a bad step
        ckpt.save(manager, done, state, tr.meta(), force=preempt)
      if periodic_fid.due(done) and not preempt:   # after the checkpoint: a resume finds the row or recomputes it
        fid_at(done)
      if preempt:
        ckpt.wait(manager)
        writer.close()
        pbar.close()
        manager.close()
        log(f"stopping on {guard.requested} after step {done}: checkpoint saved to "
            f"{ckpt.checkpoint_dir(workdir)}/{done}; run the same command again to resume")
        return state
      if tc.sample_every and done % tc.sample_every == 0 and done != tc.steps:
        tr.sample_grid(state.ema_params, done)
  pbar.close()
  ckpt.wait(manager)
  writer.flush()

  final_step = int(jax.device_get(state.step))
  if tc.steps > 0 and config.train.final_samples:
    log(f"sample grid: {tr.sample_grid(state.ema_params, final_step)}")
  if config.eval.at_end and tc.steps > 0:
    result = evaluate_generator(tr.generator(), state.ema_params, config, tr.mesh, cache_dir(config, workdir), log=log)
    result["step"] = final_step
    writer.write(final_step, {k: v for k, v in result.items() if isinstance(v, (int, float)) and v is not None},
                 kind="eval")
    if jax.process_index() == 0:
      storage.write_json(os.path.join(workdir, "eval.json"), result, indent=2)
    log("eval: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
  if jax.process_index() == 0 and final_step >= tc.steps:
    # Written last, and never on a preemption stop: a watcher (tpu/resume_after_preemption.sh)
    # relaunches until it appears.
    storage.write_json(os.path.join(workdir, "train_complete.json"), {"step": final_step, "time": time.time()})
  writer.close()
  manager.close()
  return state


# ---- rebuilding a trainer and its parameters from a workdir (sample / eval / fine-tuning) ----
def config_of(workdir: str) -> ml_collections.ConfigDict:
  """The config stored with the latest checkpoint of `workdir`, written over `base_config()`: a run
  saved before a field existed gets that field's default."""
  meta, _ = ckpt.restore_meta(workdir)
  return merged_config(meta["config"])


def load_trainer_and_params(workdir: str, config: Optional[ml_collections.ConfigDict] = None, ema: bool = True):
  """(Trainer, params, step): the latest readable checkpoint's EMA (or raw) params on this mesh.

  `config` overrides the stored one (e.g. other sampling settings); the model fields must agree
  with the checkpoint, which orbax checks shape by shape.
  """
  config = config if config is not None else config_of(workdir)
  tr = Trainer(config, workdir)
  manager = ckpt.make_manager(workdir, async_save=False)
  abstract = ckpt.abstract_with_shardings(tr.abstract_state, tr.shardings)
  state, _, step = ckpt.restore_latest(manager, abstract, log=tr.log)
  if state is None:
    raise ValueError(f"no readable checkpoint under {ckpt.checkpoint_dir(workdir)}")
  return tr, (state.ema_params if ema else state.params), step


def load_params(workdir: str, ema: bool = True) -> Any:
  """EMA params of the latest checkpoint in `workdir` as host arrays (for `--init`)."""
  _, params, _ = load_trainer_and_params(workdir, ema=ema)
  return to_host(params)    # fsdp-sharded params may span processes
