"""What the training loop does besides the step, one concern per hook, in the order `train` calls them:

  Metrics          the one-step-behind NaN check (train.nan_policy); metrics rows, progress display
  Checkpoints      save (never past a bad update); on SIGTERM / SIGINT / orbax's sync point: stop
  PeriodicFID      eval.fid_every (periodic_fid.py), after the step's checkpoint
  SampleGrids      every train.sample_every steps; the final grid (train.final_samples)
  FinalEvaluation  eval.at_end

`after_step(step, state, metrics)` runs after every step; `step` is the number of steps done
(== `state.step`, the step of metrics rows and checkpoints). Returning True ends the run at this
step boundary and skips the later hooks for the step (no FID or grid past a stop's checkpoint).
`at_end(step, state)` runs once training reached `train.steps`, never after a stop.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from adaflow import storage
from adaflow.eval.classifier import writable_cache_dir
from adaflow.eval.generate import evaluate_generator
from adaflow.flow.driver import generate_images
from adaflow.train import checkpoint as ckpt
from adaflow.train import diagnostics
from adaflow.train.images import save_grid


class Hook:
  """No-op defaults of the two calls (module docstring)."""

  def after_step(self, step: int, state, metrics) -> Optional[bool]:
    pass

  def at_end(self, step: int, state) -> None:
    pass


class NonFiniteLossError(FloatingPointError):
  """Training stopped on a NaN/Inf loss (train.nan_policy="stop"); `.step`, `.last_checkpoint`."""

  def __init__(self, message: str, step: int, last_checkpoint: Optional[int]):
    super().__init__(message)
    self.step, self.last_checkpoint = step, last_checkpoint


def _finite_mean(values) -> float:
  a = np.asarray(values, np.float64)
  a = a[np.isfinite(a)]
  return float(a.mean()) if a.size else float("nan")


class Metrics(Hook):
  """The step's metrics. A non-finite update (already dropped by the compiled step) raises
  NonFiniteLossError with train.nan_policy="stop": its flag is read one step behind, which keeps
  the device queue full, and by `check_finite()` before every checkpoint. Every train.log_every
  steps and at the last: the interval's means (non-finite values left out; "nonfinite" counts
  them), images/s, TFLOP/s and MFU -> a metrics row and the progress display's postfix."""

  def __init__(self, writer, pbar, tc, start: int, manager, workdir: str, log):
    self.writer, self.pbar, self.manager, self.workdir, self.log = writer, pbar, manager, workdir, log
    self.every, self.last, self.batch_size, self.nan_policy = tc.log_every, tc.steps, tc.batch_size, tc.nan_policy
    self.peak = diagnostics.peak_tflops_per_device(override=tc.peak_tflops_per_device)
    self.pending, self.flops, self.t_last, self.n_last = [], None, time.time(), start
    self.flag = None   # (step, "nonfinite" of the update that made it), maybe not read yet

  def compiled(self, flops: Optional[float]) -> None:
    """The step was compiled (at the first step): logs its FLOPs; throughput counts from now."""
    self.log(diagnostics.describe_flops(flops, self.peak, jax.device_count()))
    self.flops, self.t_last = flops, time.time()

  def check_finite(self) -> None:
    if self.nan_policy != "stop" or self.flag is None or not float(jax.device_get(self.flag[1])) > 0:
      return
    ckpt.wait(self.manager)
    last, at_step = self.manager.latest_step(), self.flag[0] - 1
    self.writer.flush()
    where = f"{ckpt.checkpoint_dir(self.workdir)}/{last}" if last is not None else "none (no checkpoint was saved)"
    raise NonFiniteLossError(
        f"non-finite loss or gradients at step {at_step} (update {at_step + 1}); training stopped and the "
        f"update was not applied. Last good checkpoint: {where}. Lower train.lr / raise train.warmup_steps, "
        f"or set train.nan_policy='skip' to skip such updates", step=at_step, last_checkpoint=last)

  def after_step(self, step, state, metrics) -> None:
    self.check_finite()   # the previous update's
    self.flag = (step, metrics["nonfinite"])
    self.pending.append(metrics)
    if step % self.every == 0 or step == self.last:
      host = jax.device_get(self.pending)
      mean = {k: _finite_mean([m[k] for m in host]) for k in host[0]}
      mean["nonfinite"] = float(np.sum([m["nonfinite"] for m in host]))
      if mean["nonfinite"] and self.nan_policy == "skip":
        self.log(f"skipped {int(mean['nonfinite'])} non-finite update(s) in steps {self.n_last}..{step - 1}")
      now, n = time.time(), step - self.n_last
      mean["images_per_second"] = n * self.batch_size / max(now - self.t_last, 1e-9)
      mean.update(diagnostics.throughput_metrics(self.flops, n, now - self.t_last, self.peak, jax.device_count()))
      self.t_last, self.n_last, self.pending = now, step, []
      self.writer.write(step, mean)
      self.pbar.set_postfix(loss=f"{mean['loss']:.4f}", img_s=f"{mean['images_per_second']:.0f}")
    self.pbar.update(1)


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
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested = self.requested or signal.Signals(signum).name

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

  def pending(self) -> bool:
    """Collective: a stop was requested on any process (the loop ends without honouring a request
    that came after its last check, e.g. during the last steps: the run then stops at its end)."""
    if jax.process_count() == 1:
      return self.requested is not None
    stop = bool(np.max(multihost_utils.process_allgather(np.asarray(self.requested is not None, np.int32))))
    if stop and self.requested is None:
      self.requested = "signal on another process"
    return stop

  def should_stop(self, manager, step: int) -> bool:
    if jax.process_count() == 1:
      return self.requested is not None
    stop = False
    if step % self.sync_every == 0:
      flags = multihost_utils.process_allgather(np.asarray(self.requested is not None, np.int32))
      stop = bool(np.max(flags))
      if stop and self.requested is None:
        self.requested = "signal on another process"
    if manager.reached_preemption(step):
      self.requested = self.requested or "preemption sync point"
      stop = True
    return stop


class Checkpoints(Hook):
  """Saves every train.ckpt_every steps and at the last step. A stop request before the last step
  (agreed on by all processes) saves at once and waits for it: True, every process at one step."""

  def __init__(self, manager, meta: dict, train_config, guard: PreemptionGuard, metrics: Metrics):
    self.manager, self.meta, self.guard, self.metrics = manager, meta, guard, metrics
    self.every, self.last = train_config.ckpt_every, train_config.steps

  def after_step(self, step, state, metrics) -> bool:
    stop = self.guard.should_stop(self.manager, step) and step != self.last
    if step % self.every == 0 or step == self.last or stop:
      self.metrics.check_finite()   # never checkpoint past a bad update
      ckpt.save(self.manager, step, state, self.meta, force=stop)
    if stop:
      ckpt.wait(self.manager)   # inside the signal guard: a second SIGTERM cannot cut it short
    return stop


class SampleGrids(Hook):
  """<workdir>/samples/step_*.png: `train.grid_per_class` samples per class of the EMA params from
  fixed noise, every train.sample_every steps before the last, and at the end (train.final_samples)."""

  def __init__(self, trainer, log):
    self.tr, self.log, tc = trainer, log, trainer.config.train
    self.every, self.last, self.final = tc.sample_every, tc.steps, tc.final_samples

  def after_step(self, step, state, metrics) -> None:
    if self.every and step % self.every == 0 and step != self.last:
      self.grid(state.ema_params, step)

  def at_end(self, step, state) -> None:
    if self.last > 0 and self.final:
      self.log(f"sample grid: {self.grid(state.ema_params, step)}")

  def grid(self, params, step: int) -> str:
    tr, s = self.tr, self.tr.config.sample
    k = max(tr.objective.num_classes, 1)
    labels = np.repeat(np.arange(k, dtype=np.int32), int(tr.config.train.grid_per_class))
    imgs = generate_images(tr.generator(), params, tr.mesh, jax.random.PRNGKey(7), labels, steps=s.steps,
                           method=s.method, cfg_scale=s.cfg_scale, batch_size=len(labels))
    path = os.path.join(tr.workdir, "samples", f"step_{step:07d}.png")
    if jax.process_index() == 0:
      save_grid(np.clip(imgs, -1, 1), path, rows=k if tr.objective.num_classes else 0,   # 0: square, no classes
                upscale=max(1, 64 // tr.info.image_shape[0]))
    return path


class FinalEvaluation(Hook):
  """eval.at_end: `adaflow eval`'s evaluation of the final EMA params -> a metrics row of kind
  "eval" (its numbers) and <workdir>/eval.json (everything)."""

  def __init__(self, trainer, writer, log):
    self.tr, self.writer, self.log = trainer, writer, log
    c = trainer.config
    self.cache = writable_cache_dir(c, trainer.workdir) if c.eval.at_end and c.train.steps > 0 else None

  def at_end(self, step, state) -> None:
    tr, c = self.tr, self.tr.config
    if self.cache is None:
      return
    result = evaluate_generator(tr.generator(), state.ema_params, c, tr.mesh, self.cache, log=self.log)
    result["step"] = step
    self.writer.write(step, {k: v for k, v in result.items() if isinstance(v, (int, float)) and v is not None},
                      kind="eval")
    if jax.process_index() == 0:
      storage.write_json(os.path.join(tr.workdir, "eval.json"), result, indent=2)
    self.log("eval: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
