"""Milestone checkpoints (train.keep_every), the compilation cache, the profiler window, TFLOP/s / MFU."""
import os
import types

import jax
import jax.numpy as jnp
import pytest

from conftest import tiny_config
from adaflow import config as config_lib
from adaflow.train import diagnostics
from adaflow.train.loop import train
from adaflow.train.metrics_log import read_metrics


def _files(d):
  return [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One tiny run with every diagnostic on (one compilation serves all the checks below).

  The compilation cache is process-wide: JAX's settings are put back afterwards so that later
  tests do not write there."""
  keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes")
  old = {k: getattr(jax.config, k) for k in keys}
  root = tmp_path_factory.mktemp("diag")
  c = tiny_config(**{"train.steps": 5, "train.ckpt_every": 1, "train.keep_checkpoints": 1, "train.keep_every": 2,
                     "train.compilation_cache_dir": str(root / "jax_cache"),
                     "train.compilation_cache_min_compile_secs": 0.0,
                     "train.profile_start": 1, "train.profile_steps": 2, "train.peak_tflops_per_device": 1.0})
  lines = []
  try:
    train(c, str(root / "run"), log=lines.append)
    yield types.SimpleNamespace(workdir=root / "run", cache=root / "jax_cache", lines=lines,
                                cache_dir_setting=jax.config.jax_compilation_cache_dir,
                                min_compile_setting=jax.config.jax_persistent_cache_min_compile_time_secs)
  finally:
    from jax.experimental.compilation_cache import compilation_cache
    for k, v in old.items():
      jax.config.update(k, v)
    compilation_cache.reset_cache()


def test_keep_every_keeps_milestones_beside_the_latest(run):
  steps = sorted(int(s) for s in os.listdir(run.workdir / "checkpoints") if s.isdigit())
  assert steps == [2, 4, 5]                       # milestones 2, 4 + the newest (keep_checkpoints=1)


def test_keep_every_validation_names_the_field_and_the_fix():
  with pytest.raises(ValueError, match=r"train\.keep_every.*multiple of 2"):
    config_lib.validate(tiny_config(**{"train.ckpt_every": 2, "train.keep_every": 3}))
  with pytest.raises(ValueError, match=r"train\.keep_every.*>= 0"):
    config_lib.validate(tiny_config(**{"train.keep_every": -2}))
  with pytest.raises(ValueError, match=r"train\.profile_steps"):
    config_lib.validate(tiny_config(**{"train.profile_steps": -1}))
  config_lib.validate(tiny_config(**{"train.ckpt_every": 2, "train.keep_every": 4}))


def test_compilation_cache_is_configured_and_filled(run):
  assert not diagnostics.enable_compilation_cache("")        # "" leaves JAX alone
  assert run.cache_dir_setting == str(run.cache)
  assert run.min_compile_setting == 0.0
  assert _files(run.cache), "no compiled program was written to the cache"


def test_profile_window_writes_a_trace(run):
  files = _files(run.workdir / "profile")
  assert any(f.endswith(".xplane.pb") for f in files), files


def test_profile_window_steps_and_early_exit(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(jax.profiler, "start_trace", lambda d: calls.append(("start", d)))
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
  with diagnostics.ProfileWindow(str(tmp_path), first_step=10, skip=2, count=2, enabled=True) as w:
    for step in range(10, 20):
      w.before(step)
      if w.active:
        calls.append(("step", step))
      w.after(step)
  assert calls == [("start", str(tmp_path)), ("step", 12), ("step", 13), ("stop",)]
  calls.clear()
  with diagnostics.ProfileWindow(str(tmp_path), first_step=0, skip=0, count=5, enabled=True) as w:
    w.before(0)
    w.after(0)                                    # the run ends (or is preempted) inside the window
  assert calls == [("start", str(tmp_path)), ("stop",)]
  calls.clear()
  with diagnostics.ProfileWindow(str(tmp_path), first_step=0, skip=0, count=5, enabled=False) as w:
    w.before(0)                                   # not process 0 / off: no trace
  assert calls == []


def test_metrics_rows_have_tflops(run):
  rows = read_metrics(str(run.workdir))
  assert len(rows) == 5 and all(r["tflops_per_second"] > 0 for r in rows)
  # mfu = achieved / (peak * devices), here with the override peak of 1 TFLOP/s per device.
  assert all(r["mfu"] == pytest.approx(r["tflops_per_second"] / jax.device_count()) for r in rows)
  assert any("GFLOP/step" in line for line in run.lines)


def test_cpu_has_no_peak_so_no_mfu():
  assert diagnostics.peak_tflops_per_device(jax.devices("cpu")[0]) is None
  m = diagnostics.throughput_metrics(2e12, steps=3, seconds=2.0, peak_per_device=None, num_devices=4)
  assert m == {"tflops_per_second": 3.0}
  m = diagnostics.throughput_metrics(2e12, steps=3, seconds=2.0, peak_per_device=1.5, num_devices=4)
  assert m == {"tflops_per_second": 3.0, "mfu": 0.5}
  assert diagnostics.throughput_metrics(None, steps=3, seconds=2.0, peak_per_device=1.5, num_devices=4) == {}


@pytest.mark.parametrize("platform,kind,peak", [
    ("tpu", "TPU v4", 275), ("tpu", "TPU v5 lite", 197), ("tpu", "TPU v5e", 197), ("tpu", "TPU v5p", 459),
    ("tpu", "TPU v5", 459), ("tpu", "TPU v6 lite", 918), ("gpu", "NVIDIA A100-SXM4-80GB", 312),
    ("gpu", "NVIDIA H100 80GB HBM3", 989), ("gpu", "NVIDIA H200", 989), ("gpu", "NVIDIA GeForce RTX 3090", None),
    ("cpu", "cpu", None)])
def test_peak_table(platform, kind, peak):
  dev = types.SimpleNamespace(platform=platform, device_kind=kind)
  assert diagnostics.peak_tflops_per_device(dev) == peak
  assert diagnostics.peak_tflops_per_device(dev, override=100.0) == 100.0


def test_flops_from_cost_handles_dicts_lists_and_missing_keys():
  assert diagnostics.flops_from_cost({"flops": 5.0, "bytes accessed": 1.0}) == 5.0
  assert diagnostics.flops_from_cost([{"flops": 2.0}, {"flops": 3.0}]) == 5.0
  assert diagnostics.flops_from_cost([{"bytes accessed": 1.0}]) is None
  assert diagnostics.flops_from_cost({}) is None
  assert diagnostics.flops_from_cost(None) is None
  assert diagnostics.flops_from_cost({"flops": -1.0}) is None


def test_compile_step_keeps_donation_and_counts_global_flops():
  f = jax.jit(lambda w, x: (w + 1.0, jnp.sum(x @ w)), donate_argnums=(0,))
  w, x = jnp.ones((32, 32)), jnp.ones((8, 32))
  compiled, flops = diagnostics.compile_step(f, w, x)
  assert flops >= 2 * 8 * 32 * 32                 # the matmul alone
  w2, y = compiled(w, x)
  assert float(y) == 8 * 32 * 32 and w.is_deleted()


def test_flops_of_a_scanned_step_count_every_block(tmp_path):
  """XLA counts a scanned (while-loop) body once; the logged FLOPs come from the unrolled step's
  lowering, so they equal the FLOPs of the same step run with scan_blocks=False."""
  from adaflow.train.loop import Trainer
  from adaflow.train.sharded_state import init_state
  counts = {}
  for scan in (True, False):
    tr = Trainer(tiny_config(**{"model.scan_blocks": scan, "model.depth": 3}), str(tmp_path / str(scan)), log=lambda m: None)
    state = init_state(tr.objective, tr.tx, tr.mesh, tr.root_rng, tr.shardings)
    batch = {"image": jnp.zeros((tr.config.train.batch_size,) + tr.info.image_shape, jnp.float32),
             "label": jnp.zeros((tr.config.train.batch_size,), jnp.int32)}
    batch = jax.device_put(batch, tr.batch_sharding)
    counting = tr.flops_counting_step()
    assert (counting is None) == (not scan)
    counts[scan] = diagnostics.flops_from_cost(tr.jitted_step().lower(state, batch).cost_analysis())
    if scan:
      _, counts["scan_reported"] = diagnostics.compile_step(tr.jitted_step(), state, batch, flops_from=counting)
  assert counts[True] < 0.8 * counts[False]                  # the scanned program's own count misses blocks
  assert counts["scan_reported"] == pytest.approx(counts[False], rel=1e-6)
