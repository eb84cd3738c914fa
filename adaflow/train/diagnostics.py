"""Run diagnostics: train-step FLOPs (`compile_step`: one compilation, and XLA's cost analysis),
TFLOP/s and MFU (`throughput_metrics`, against `peak_tflops_per_device`), a `jax.profiler` window
(`ProfileWindow`) and JAX's persistent compilation cache (`enable_compilation_cache`), so that a
resumed run loads the compiled step instead of recompiling it. Used by loop.py and hooks.py.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Optional, Sequence

import jax
from jax.experimental.compilation_cache import compilation_cache

from adaflow import storage

# Peak dense bf16 TFLOP/s per JAX device (a TPU v4/v5p/v6e/v5e device is one chip), matched as a
# lower-case substring of `device.device_kind`, first match wins (so "v5 lite" precedes "v5").
# TPU device kinds: "TPU v4", "TPU v5 lite" (v5e), "TPU v5" / "TPU v5p", "TPU v6 lite" (v6e).
# GPU values are the SXM dense (no sparsity) tensor-core numbers.
PEAK_BF16_TFLOPS: dict[str, tuple[tuple[str, float], ...]] = {
    "tpu": (("v6 lite", 918.0), ("v6e", 918.0), ("v5 lite", 197.0), ("v5e", 197.0), ("v5p", 459.0),
            ("v5", 459.0), ("v4", 275.0)),
    "gpu": (("h200", 989.0), ("h100", 989.0), ("a100", 312.0)),
}


def peak_tflops_per_device(device: Optional[Any] = None, override: float = 0.0) -> Optional[float]:
  """Peak bf16 TFLOP/s of one device: `override` if > 0, else from `PEAK_BF16_TFLOPS`.

  None when unknown (CPU has no reliable peak, or an accelerator missing from the table); MFU is
  then not reported. Set `train.peak_tflops_per_device` to report it anyway.
  """
  if override and override > 0:
    return float(override)
  device = device or jax.devices()[0]
  kind = str(getattr(device, "device_kind", "")).lower()
  platform = str(getattr(device, "platform", "")).lower()
  if platform in ("cuda", "rocm"):
    platform = "gpu"
  for sub, peak in PEAK_BF16_TFLOPS.get(platform, ()):
    if sub in kind:
      return peak
  return None


def flops_from_cost(cost: Any) -> Optional[float]:
  """The 'flops' entry of an XLA cost analysis, or None if it is missing / not positive.

  `cost_analysis()` returns a dict in current JAX, a list with one dict per program in older
  versions (their flops are summed), or None when the backend has no cost model.
  """
  if cost is None:
    return None
  entries: Sequence[Any] = [cost] if isinstance(cost, dict) else list(cost)
  total, found = 0.0, False
  for entry in entries:
    if isinstance(entry, dict) and entry.get("flops") is not None:
      total += float(entry["flops"])
      found = True
  return total if found and total > 0 else None


def compile_step(jitted, *args, flops_from=None) -> tuple[Any, Optional[float]]:
  """(compiled step, global FLOPs per step or None) from one lowering and one compilation.

  Calling the returned `jax.stages.Compiled` runs the same program as `jitted` (shardings and
  `donate_argnums` are baked into the lowering), but `jitted` itself would compile again on its
  first call, since ahead-of-time compilations do not fill jit's cache: use the returned object.

  The FLOPs come from the cost analysis of the *lowered* (not yet partitioned) program, which
  counts the whole global batch. The compiled program's analysis is per device after SPMD
  partitioning; it is the fallback, scaled by the device count. `flops_from` (optional): another
  jitted function of the same arguments whose lowering is counted instead (the step with scanned
  blocks unrolled: XLA counts a loop body once); it is lowered only, never compiled.
  """
  lowered = jitted.lower(*args)
  try:
    flops = flops_from_cost((lowered if flops_from is None else flops_from.lower(*args)).cost_analysis())
  except Exception:  # not every backend / version implements it; diagnostics must not stop training
    flops = None
  compiled = lowered.compile()
  if flops is None:
    try:
      per_device = flops_from_cost(compiled.cost_analysis())
      flops = per_device * jax.device_count() if per_device is not None else None
    except Exception:
      flops = None
  return compiled, flops


def throughput_metrics(flops_per_step: Optional[float], steps: int, seconds: float,
                       peak_per_device: Optional[float], num_devices: int) -> dict:
  """{'tflops_per_second': achieved global TFLOP/s, 'mfu': fraction of peak} for `steps` steps in
  `seconds` of wall time; keys are left out when the FLOPs (or, for MFU, the peak) are unknown."""
  if not flops_per_step or steps <= 0 or seconds <= 0:
    return {}
  achieved = flops_per_step * steps / seconds / 1e12
  out = {"tflops_per_second": achieved}
  if peak_per_device:
    out["mfu"] = achieved / (peak_per_device * num_devices)
  return out


def describe_flops(flops_per_step: Optional[float], peak_per_device: Optional[float], num_devices: int) -> str:
  """One start-up log line: FLOPs per step and the peak MFU is measured against."""
  if not flops_per_step:
    return "train step FLOPs: unknown (no XLA cost analysis); tflops_per_second/mfu not logged"
  peak = (f"peak {peak_per_device:g} TFLOP/s per device x {num_devices}" if peak_per_device
          else "no known peak for this device (set train.peak_tflops_per_device for mfu)")
  return f"train step: {flops_per_step / 1e9:.3f} GFLOP/step (XLA cost analysis), {peak}"


class ProfileWindow:
  """Traces `count` steps with `jax.profiler`, starting `skip` steps after the run's first step.

  Counting from the first step of *this* run (not step 0) means a resumed run is profiled too, and
  `skip >= 1` keeps one-off warm-up out of the trace. Use as a context manager around the loop:
  `before(step)` ahead of running step `step`, `after(step, outputs)` once it was dispatched; the
  trace stops after the last step of the window (waiting for its outputs, so the device work is in
  the trace) or when the context exits early (end of training, preemption, an error).
  Only process 0 traces unless `enabled` says otherwise.
  """

  def __init__(self, logdir: str, first_step: int, skip: int, count: int, enabled: Optional[bool] = None):
    self.logdir = logdir
    self.start, self.stop = first_step + max(int(skip), 0), first_step + max(int(skip), 0) + int(count)
    on = jax.process_index() == 0 if enabled is None else enabled
    self.enabled = bool(on) and int(count) > 0
    self.active = False
    self._local = logdir   # where the trace is written (a temporary directory for gs:// logdirs)

  def before(self, step: int) -> None:
    if self.enabled and not self.active and step == self.start:
      if storage.is_remote(self.logdir):
        # The profiler writes local files only: trace into a temporary directory, upload at the end.
        self._local = tempfile.mkdtemp(prefix="adaflow_profile_")
      else:
        os.makedirs(self.logdir, exist_ok=True)
        self._local = self.logdir
      jax.profiler.start_trace(self._local)
      self.active = True

  def after(self, step: int, outputs: Any = None) -> None:
    if self.active and step + 1 >= self.stop:
      self._finish(outputs)

  def _finish(self, outputs: Any = None) -> None:
    if outputs is not None:
      jax.block_until_ready(outputs)   # dispatch is async: wait so the traced steps really ran
    jax.profiler.stop_trace()
    self.active = False
    if self._local != self.logdir:
      storage.copy_tree(self._local, self.logdir)
      shutil.rmtree(self._local, ignore_errors=True)

  def __enter__(self) -> "ProfileWindow":
    return self

  def __exit__(self, *exc) -> bool:
    if self.active:
      self._finish()
    return False


def enable_compilation_cache(path: str, min_compile_time_secs: float = 1.0, min_entry_size_bytes: int = 0) -> bool:
  """Turns on JAX's persistent compilation cache in `path` ("" = leave JAX's settings alone).

  Process-wide and meant to be called before the first compilation of the run. Programs that
  compiled faster than `min_compile_time_secs` are not written (reading them back costs about as
  much as compiling them); 0 caches everything. Returns whether the cache was configured.
  A cache directory may also be a `gs://` path. Only share it with trusted users: JAX executes
  what it loads from there.
  """
  if not path:
    return False
  if "://" not in path:
    path = os.path.abspath(path)
    storage.check_writable(path, "train.compilation_cache_dir")   # creates it; one line if it cannot
  current = jax.config.jax_compilation_cache_dir
  if current and current != path:
    # JAX opens the cache once, in the first directory it sees; start over for a new one.
    compilation_cache.reset_cache()
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", int(min_entry_size_bytes))
  return True
