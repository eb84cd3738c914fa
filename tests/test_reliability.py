"""Fault injection: SIGTERM/SIGINT, kill -9, corrupted/truncated checkpoints, NaN losses, full or
unwritable disks, mesh changes on restore, FSDP sharding of params and optimizer state."""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from adaflow.train import checkpoint as ckpt
from adaflow.train.loop import NonFiniteLossError, PreemptionGuard, Trainer, train
from adaflow.train.metrics_log import read_metrics
from test_multiprocess import CLI_CONFIG, finish, record, run_processes, start

QUIET = lambda m: None


def losses(workdir):
  return [r["loss"] for r in read_metrics(str(workdir))]


def steps_of(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def wait_for_rows(path, n, proc, timeout=240, until=lambda: True):
  """Waits until `path` has `n` logged train rows and `until()` holds."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      pytest.fail(f"worker exited early: {proc.communicate()[1][-3000:]}")
    if os.path.exists(path):
      with open(path) as f:
        if sum(1 for line in f if '"train"' in line) >= n and until():
          return
    time.sleep(0.05)
  proc.kill()
  pytest.fail(f"no progress to {n} logged steps in {timeout}s")


LONG = {"train.steps": 1000, "train.ckpt_every": 3, "train.keep_checkpoints": 2}


def test_sigterm_saves_at_step_boundary_exits_cleanly_and_resumes_exactly(tmp_path):
  w = str(tmp_path / "w")
  proc = start({"devices": 1, "runs": [{"workdir": w, "overrides": dict(LONG, **{"train.ckpt_every": 1000})}]})
  wait_for_rows(os.path.join(w, "metrics.jsonl"), 4, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = finish(proc)                       # asserts exit code 0
  stopped = out["runs"][0]["final_step"]
  assert 4 <= stopped < 1000
  assert f"stopping on SIGTERM after step {stopped}: checkpoint saved" in err
  assert steps_of(w) == [stopped]               # the only checkpoint is the preemption one
  total = stopped + 3
  (res, err2), = run_processes([{"devices": 1, "runs": [
      {"workdir": w, "overrides": dict(LONG, **{"train.steps": total})},
      {"workdir": str(tmp_path / "ref"), "overrides": dict(LONG, **{"train.steps": total})}]}])
  resumed, ref = res["runs"]
  assert resumed["steps"] == ref["steps"] == list(range(1, total + 1))
  assert resumed["losses"] == ref["losses"]     # bit-exact on CPU
  assert resumed["param_sum"] == ref["param_sum"]
  record("SIGTERM during training (subprocess)",
         f"exit code 0, message 'stopping on SIGTERM after step {stopped}: checkpoint saved'; checkpoints "
         f"{[stopped]}; resumed to step {total}: losses bit-identical to an uninterrupted run")


def test_kill9_at_random_step_then_resume_is_bit_exact(tmp_path):
  w = str(tmp_path / "w")
  kill_after = random.Random(os.urandom(8)).randint(4, 12)
  proc = start({"devices": 1, "runs": [{"workdir": w, "overrides": LONG}]})
  # Checkpoints are written asynchronously: on a loaded machine step 3's may still be in flight
  # after 5 logged steps. Kill only once one has been finalized (the digit-named directory
  # appears only after orbax's atomic rename), so there is something to resume from.
  has_checkpoint = lambda: os.path.isdir(os.path.join(w, "checkpoints")) and bool(steps_of(w))
  wait_for_rows(os.path.join(w, "metrics.jsonl"), kill_after, proc, until=has_checkpoint)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  complete = steps_of(w)
  assert complete, f"killed after {kill_after} logged steps with no complete checkpoint"
  total = complete[-1] + 4
  (res, err), = run_processes([{"devices": 1, "runs": [
      {"workdir": w, "overrides": dict(LONG, **{"train.steps": total})},
      {"workdir": str(tmp_path / "ref"), "overrides": dict(LONG, **{"train.steps": total})}]}])
  resumed, ref = res["runs"]
  assert "could not be restored" not in err    # every visible checkpoint was complete
  n = total
  assert resumed["steps"][:n] == ref["steps"] == list(range(1, n + 1))
  assert resumed["losses"][:n] == ref["losses"], f"kill -9 after {kill_after} logged steps"
  # Rows logged after the checkpoint and before the kill were dropped on resume: every step once.
  logged = [r["step"] for r in read_metrics(w)]
  assert logged == sorted(set(logged)), "a step was logged twice after kill -9 and resume"
  record("kill -9 at a random step (subprocess)",
         f"killed after {kill_after} logged steps; complete checkpoints left: {complete} (all restorable); "
         f"resumed from {complete[-1]} to {total}: losses bit-identical to an uninterrupted run")


def test_sigint_in_process_checkpoints_and_returns(tmp_path):
  c = tiny_config(**{"train.steps": 50, "train.ckpt_every": 100})
  seen = []

  def log(msg):
    seen.append(msg)
    if "steps 0 -> 50" in msg:                 # the start-up line, just before the first step
      os.kill(os.getpid(), signal.SIGINT)

  before = signal.getsignal(signal.SIGINT)    # default_int_handler; SIG_IGN when run in the background
  state = train(c, str(tmp_path), log=log)
  assert int(state.step) == 1 and steps_of(str(tmp_path)) == [1]
  assert any("stopping on SIGINT after step 1" in m for m in seen)
  assert signal.getsignal(signal.SIGINT) is before   # handlers restored
  record("SIGINT (Ctrl-C) during training", "checkpoint saved at step 1 (the next step boundary), train() "
         "returned normally, signal handlers restored; a second Ctrl-C raises KeyboardInterrupt at once")


def _signal_at_start(seen, start_line, sig=signal.SIGINT):
  """A train() log that sends `sig` to this process on the start-up line `start_line`."""
  def log(msg):
    seen.append(msg)
    if start_line in msg:
      os.kill(os.getpid(), sig)
  return log


def test_a_stop_at_the_last_step_is_honoured_and_a_stopped_stage_is_not_done(tmp_path, monkeypatch):
  """A stop request the loop's own check cannot honour (during the last step: the run ends there
  anyway) still stops the run: no train_complete.json (the TPU watcher's and a multi-stage job's
  sign of a finished run; a shorter earlier run's is removed at the start) until the rerun. A stage
  of a multi-run job (`train_stage`) that stopped is not marked DONE and ends the job with
  StageStopped: the compose recipe went on from a half-trained stage to the next ones (the
  signal forgotten) when a SIGTERM came during a stage."""
  from adaflow.pipelines import stages
  w = str(tmp_path / "run")
  complete = os.path.join(w, "train_complete.json")
  c = tiny_config(**{"train.steps": 2, "train.ckpt_every": 1})
  train(c, w, log=QUIET)
  assert os.path.exists(complete)
  c.train.steps, seen = 3, []
  state = train(c, w, log=_signal_at_start(seen, "steps 2 -> 3"))     # one step, the last
  assert int(state.step) == 3 and steps_of(w)[-1] == 3 and not os.path.exists(complete)
  assert any("stopping on SIGINT after step 3" in m for m in seen)
  train(c, w, log=QUIET)                                               # the rerun completes it
  assert json.load(open(complete))["step"] == 3
  c.train.steps, seen = 2, []                        # fewer steps than the run has: says so, trains none
  assert int(train(c, w, log=seen.append).step) == 3 and steps_of(w)[-1] == 3
  assert any("at step 3, train.steps=2 reached: no training" in m for m in seen)

  real = stages.train
  monkeypatch.setattr(stages, "train", lambda cfg, d, **kw: real(cfg, d, log=_signal_at_start([], "steps 0 -> 2"), **kw))
  c = tiny_config(**{"train.steps": 2, "train.ckpt_every": 1})
  with pytest.raises(stages.StageStopped, match=r"stopped at step 1 of 2 .*not marked done"):
    stages.run_stage(str(tmp_path), "stage", lambda d: stages.train_stage(c, d))
  assert not os.path.exists(tmp_path / "stage" / "DONE")
  monkeypatch.setattr(stages, "train", real)
  stages.run_stage(str(tmp_path), "stage", lambda d: stages.train_stage(c, d))
  assert os.path.exists(tmp_path / "stage" / "DONE") and steps_of(str(tmp_path / "stage"))[-1] == 2


def test_preemption_guard_second_sigint_interrupts():
  with PreemptionGuard() as g:
    os.kill(os.getpid(), signal.SIGTERM)
    assert g.requested == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)


def _corrupt(step_dir, mode):
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
  data = [f for f in files if os.sep + "d" + os.sep in f] or files
  for f in data:
    size = os.path.getsize(f)
    if mode == "truncate":
      with open(f, "r+b") as fh:
        fh.truncate(size // 2)
    else:
      with open(f, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(bytes(b ^ 0xFF for b in fh.read(16)))


@pytest.mark.parametrize("mode", ["truncate", pytest.param("flip", marks=pytest.mark.slow)])
def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, mode):
  over = {"train.steps": 4, "train.ckpt_every": 2}
  train(tiny_config(**over), str(tmp_path / "w"), log=QUIET)
  _corrupt(str(tmp_path / "w" / "checkpoints" / "4"), mode)
  msgs = []
  state = train(tiny_config(**dict(over, **{"train.steps": 6})), str(tmp_path / "w"), log=msgs.append)
  assert any("checkpoint at step 4" in m and "could not be restored" in m for m in msgs), msgs
  assert any(m.endswith("checkpoints/2") for m in msgs if m.startswith("resumed from")), msgs
  assert int(state.step) == 6
  train(tiny_config(**dict(over, **{"train.steps": 6})), str(tmp_path / "ref"), log=QUIET)
  assert losses(tmp_path / "w")[-4:] == losses(tmp_path / "ref")[-4:]     # steps 3..6 redone exactly
  report = next(m for m in msgs if "could not be restored" in m)
  record(f"latest checkpoint corrupted ({'files truncated to half' if mode == 'truncate' else '16 bytes flipped in each data file'})",
         f"reported: '{report[:160]}...'; resumed from step 2; steps 3..6 bit-identical to a clean run; "
         f"step 2 was never at risk")


def test_checksum_detects_silently_changed_data(tmp_path):
  """Data that still decodes but differs from what was saved is caught by the stored checksum."""
  train(tiny_config(**{"train.steps": 4, "train.ckpt_every": 2}), str(tmp_path), log=QUIET)
  meta_file = next(os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "checkpoints" / "4" / "meta")
                   for f in fs if not f.startswith("_"))
  with open(meta_file) as f:
    meta = json.load(f)
  meta[ckpt.CHECKSUM_KEY] = (int(meta[ckpt.CHECKSUM_KEY]) + 1) % 2**32
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  tr = Trainer(tiny_config(), str(tmp_path), QUIET)
  msgs = []
  mngr = ckpt.make_manager(str(tmp_path), async_save=False)
  state, meta, step = ckpt.restore_latest(mngr, ckpt.abstract_with_shardings(tr.abstract_state, tr.shardings),
                                          log=msgs.append)
  assert step == 2 and "checksum mismatch" in msgs[0]
  assert meta[ckpt.CHECKSUM_KEY] == ckpt.state_checksum(state)
  record("latest checkpoint readable but wrong (stored checksum no longer matches the data)",
         f"reported: '{msgs[0][:140]}...'; restored step 2 instead")


def test_nan_stop_names_step_and_keeps_last_good_checkpoint(tmp_path):
  c = tiny_config(**{"train.steps": 10, "train.ckpt_every": 2, "train.debug_nan_step": 5})
  with pytest.raises(NonFiniteLossError, match=r"at step 5 .*Last good checkpoint: .*checkpoints/4") as e:
    train(c, str(tmp_path), log=QUIET)
  assert e.value.step == 5 and e.value.last_checkpoint == 4
  assert steps_of(str(tmp_path)) == [2, 4]     # nothing saved at or after the bad step
  record("NaN loss injected at step 5 (train.nan_policy='stop')",
         f"NonFiniteLossError: '{str(e.value)[:150]}...'; checkpoints kept: [2, 4]")


def test_nan_skip_drops_the_update_and_continues(tmp_path):
  c = tiny_config(**{"train.steps": 8, "train.ckpt_every": 4, "train.debug_nan_step": 5,
                     "train.nan_policy": "skip"})
  state = train(c, str(tmp_path), log=QUIET)
  rows = read_metrics(str(tmp_path))
  assert int(state.step) == 8 and [r["nonfinite"] for r in rows] == [0, 0, 0, 0, 0, 1, 0, 0]
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state.params))
  # The skipped update left params, optimizer state and EMA bit-identical (step function directly).
  tr = Trainer(c, str(tmp_path / "x"), QUIET)
  from adaflow.train.sharded_state import init_state
  s0 = init_state(tr.objective, tr.tx, tr.mesh, tr.root_rng, tr.shardings)
  s0 = s0.replace(step=s0.step + 5)
  from adaflow import data as data_lib
  batch = tr.global_batch(data_lib.make_train_batches(c.data, global_batch_size=8, seed=0)[5])
  before = jax.device_get((s0.params, s0.opt_state, s0.ema_params))
  s1, m = tr.jitted_step()(s0, batch)
  assert float(m["nonfinite"]) == 1.0 and int(s1.step) == 6
  after = jax.device_get((s1.params, s1.opt_state, s1.ema_params))
  jax.tree_util.tree_map(np.testing.assert_array_equal, after, before)
  record("NaN loss injected at step 5 (train.nan_policy='skip')",
         "update at step 5 dropped in the compiled step (params/optimizer/EMA bit-identical), logged as "
         "nonfinite=1, training finished all 8 steps with finite params")


def test_invalid_nan_policy_is_a_config_error(tmp_path):
  with pytest.raises(ValueError, match="train.nan_policy"):
    train(tiny_config(**{"train.nan_policy": "ignore"}), str(tmp_path), log=QUIET)


def test_full_disk_while_saving_is_a_clear_error(tmp_path, monkeypatch):
  def full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", full)
  import re
  with pytest.raises(ckpt.CheckpointWriteError,
                     match=re.escape(f"checkpoint step 2 to {tmp_path}/checkpoints: the disk is full")):
    train(tiny_config(), str(tmp_path), log=QUIET)
  record("disk full while saving (writer raises OSError(ENOSPC), monkeypatched)",
         "CheckpointWriteError: 'could not write checkpoint step 2 to <dir>/checkpoints: the disk is full or "
         "the directory is not writable ...'")


def test_unwritable_checkpoint_dir_fails_before_training(tmp_path):
  (tmp_path / "checkpoints").write_text("not a directory")
  with pytest.raises(ckpt.CheckpointWriteError, match="not writable"):
    train(tiny_config(), str(tmp_path), log=QUIET)
  record("checkpoint directory not writable", "CheckpointWriteError before the first step: "
         "'checkpoint directory ... is not writable or the disk is full'")


def test_a_second_run_in_a_workdir_in_use_is_refused_before_it_compiles(tmp_path, monkeypatch):
  """Two `adaflow train` in one workdir (started twice, or a scheduler's retry while the first still
  runs) both trained and wrote over each other's checkpoints and metrics; now the second one stops
  with one error naming the first (its lock is held by this test here), before anything compiles,
  and the workdir's checkpoints stay as they were. The lock is the kernel's: released at exit."""
  from adaflow import storage
  w = str(tmp_path / "w")
  cfg = tiny_config(**{"train.steps": 2})
  train(cfg, w, log=lambda m: None)
  before = sorted(os.listdir(os.path.join(w, "checkpoints")))
  monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled despite the lock"))
  with storage.exclusive_use(w):
    with pytest.raises(ValueError, match=r"--workdir .* is in use by another run \(pid \d+ on .*\)") as e:
      train(tiny_config(**{"train.steps": 4}), w, log=lambda m: None)
  assert sorted(os.listdir(os.path.join(w, "checkpoints"))) == before
  monkeypatch.undo()
  assert int(train(tiny_config(**{"train.steps": 4}), w, log=lambda m: None).step) == 4   # released
  record("a second run started in a workdir that a run is training in",
         f"refused before compiling: '{str(e.value)[:90]}...'; checkpoints {before} untouched; lock released at exit")


def test_a_pipeline_in_a_workdir_in_use_is_refused_before_its_first_stage(tmp_path, monkeypatch):
  """`adaflow compose` and train-then-prune run several trainings and a pruning pass between them;
  each training locked only its own stage directory, so a second pipeline in the same workdir ran the
  pruning pass beside the first and rewrote its config.json. The pipeline now holds the top
  workdir's lock through every stage. Train-then-prune's final evaluation cache is checked before
  stage 1 (it failed after every stage)."""
  from adaflow import storage
  from adaflow.config_defaults import compose_defaults, grouped_defaults, routing_defaults
  from adaflow.pipelines import grouped, recipe
  for module in (grouped, recipe):
    monkeypatch.setattr(module, "run_stage", lambda *a, **k: pytest.fail("ran a stage"))
  composed = tiny_config()
  composed.routing, composed.compose = routing_defaults(), compose_defaults()
  composed.compose.routing = True
  pruned = tiny_config(**{"eval.at_end": True})
  pruned.grouped = grouped_defaults()
  for name, run, config in (("compose", recipe.run_recipe, composed), ("grouped", grouped.run_grouped, pruned)):
    w = tmp_path / name
    w.mkdir()
    (w / "config.json").write_text("the first run's")
    with storage.exclusive_use(w):
      with pytest.raises(ValueError, match=r"--workdir .* is in use by another run \(pid \d+ on .*\)"):
        run(config, str(w), log=QUIET)
    assert (w / "config.json").read_text() == "the first run's", name
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.setenv("ADAFLOW_CACHE", str(blocker / "cache"))
  with pytest.raises(ValueError, match=r"^eval.cache_dir \(or \$ADAFLOW_CACHE\) .*a_file/cache is not writable"):
    grouped.run_grouped(pruned, str(tmp_path / "grouped2"), log=QUIET)
  record("a second adaflow compose / train-then-prune in a workdir in use",
         "refused before its first stage (config.json untouched); the pipeline's lock covers its pruning pass")


def test_unwritable_evaluation_and_compilation_caches_fail_before_the_first_step(tmp_path, monkeypatch):
  """An evaluation cache (eval.cache_dir / $ADAFLOW_CACHE) that cannot be written failed after
  training and after training the evaluation's network, with a traceback; an unwritable
  train.compilation_cache_dir was a makedirs traceback. Both are one error before anything compiles."""
  from adaflow.train import loop
  monkeypatch.setattr(loop.diagnostics, "compile_step", lambda *a, **k: pytest.fail("compiled"))
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.setenv("ADAFLOW_CACHE", str(blocker / "cache"))
  with pytest.raises(ValueError, match=r"^eval.cache_dir \(or \$ADAFLOW_CACHE\) .*a_file/cache is not writable"):
    train(tiny_config(**{"eval.at_end": True}), str(tmp_path / "w"), log=QUIET)
  # `adaflow compose` evaluates after its last stage: checked before the first.
  from adaflow import cli
  from adaflow.commands import compose
  monkeypatch.setattr(compose, "run_recipe", lambda *a, **k: pytest.fail("trained"))
  cli.FLAGS.unparse_flags()
  with pytest.raises(SystemExit) as stop:
    cli.main(["adaflow", "compose", f"--config={CLI_CONFIG}", f"--workdir={tmp_path / 'c'}"])
  assert stop.value.code == 2
  # The network a step policy's reward or a DQ-VAE's perceptual loss uses (built with the objective,
  # before compilation) is not trained into a cache it cannot write.
  from adaflow.eval import classifier
  monkeypatch.setattr(classifier, "build_classifier", lambda *a, **k: pytest.fail("trained the network"))
  with pytest.raises(ValueError, match=r"^eval.cache_dir \(or \$ADAFLOW_CACHE\) .*a_file/reward is not writable"):
    classifier.get_classifier(tiny_config().data, str(blocker / "reward"), log=QUIET)
  monkeypatch.delenv("ADAFLOW_CACHE")
  with pytest.raises(ValueError, match=r"^train.compilation_cache_dir .*a_file/xla is not writable"):
    train(tiny_config(**{"train.compilation_cache_dir": str(blocker / "xla")}), str(tmp_path / "w2"), log=QUIET)
  record("unwritable evaluation cache / compilation cache",
         "one ValueError naming eval.cache_dir / train.compilation_cache_dir before the first step compiles "
         "(train, adaflow compose before its first stage, the reward / perceptual network before it trains)")


def test_free_space_check_before_a_save(tmp_path, monkeypatch):
  """The state's bytes + metadata against the disk's free space; a file system that cannot say
  (no statvfs) and an object store are not checked."""
  import types
  state = {"w": np.zeros((1024, 256), np.float32)}      # 1 MiB, + 1 KiB per array + 64 KiB of metadata
  local = types.SimpleNamespace(directory=tmp_path)
  free = lambda mib: (lambda d: types.SimpleNamespace(free=int(mib * 2 ** 20)))
  monkeypatch.setattr(shutil, "disk_usage", free(1.07))
  ckpt.check_space(local, 3, state)
  monkeypatch.setattr(shutil, "disk_usage", free(1.0))
  with pytest.raises(ckpt.CheckpointWriteError, match=r"checkpoint step 3 to .*: the disk is full \(the checkpoint "
                     r"needs about 1\.1 MiB, 1\.0 MiB are free; nothing was written\)"):
    ckpt.check_space(local, 3, state)

  def no_statvfs(d):
    raise OSError(errno.ENOSYS, "Function not implemented")
  monkeypatch.setattr(shutil, "disk_usage", no_statvfs)
  ckpt.check_space(local, 3, state)
  ckpt.check_space(types.SimpleNamespace(directory="gs://bucket/run/checkpoints"), 3, state)
  # train() checks the abstract state before anything compiles: no step runs, nothing is logged.
  monkeypatch.setattr(shutil, "disk_usage", free(0.01))
  with pytest.raises(ckpt.CheckpointWriteError, match=r"could not write checkpoint to .*: the disk is full"):
    train(tiny_config(), str(tmp_path / "w"), log=QUIET)
  assert read_metrics(str(tmp_path / "w")) == [] and not os.listdir(tmp_path / "w" / "checkpoints")


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
  return r.returncode == 0


@pytest.mark.parametrize("size,checked", [("720k", False), ("1228k", True)])
def test_real_full_disk_keeps_older_checkpoint(tmp_path, monkeypatch, size, checked):
  """A tmpfs that holds one checkpoint but not two: the second save fails with a clear error (no
  hang), and the first (older) checkpoint is not deleted even with keep_checkpoints=1. Checked: the
  free-space check refuses it before writing. Not checked (the check passed, then the disk filled,
  e.g. by another job): orbax's write itself fails."""
  mnt = tmp_path / "mnt"
  if not _mount_tmpfs(mnt, size):
    pytest.skip("cannot mount a tmpfs here (needs root); the monkeypatched test covers the message")
  if not checked:
    monkeypatch.setattr(ckpt, "check_space", lambda *a: None)
  try:
    c = tiny_config(**{"train.steps": 4, "train.ckpt_every": 2, "train.keep_checkpoints": 1})
    with pytest.raises(ckpt.CheckpointWriteError, match="step 4 .* disk is full " + (
        r"\(the checkpoint needs about" if checked else r"or the directory is not writable \(ValueError")):
      train(c, str(mnt / "w"), log=QUIET)
    assert steps_of(str(mnt / "w")) == [2]
    tr = Trainer(c, str(mnt / "w"), QUIET)
    state, _, step = ckpt.restore_latest(ckpt.make_manager(str(mnt / "w"), async_save=False),
                                         ckpt.abstract_with_shardings(tr.abstract_state, tr.shardings),
                                         log=pytest.fail)
    assert step == 2 and int(state.step) == 2
    record(f"real full disk ({size}B tmpfs, room for one checkpoint), keep_checkpoints=1, free-space check "
           f"{'on' if checked else 'off (the disk fills during the write)'}",
           f"second save {'refused before writing' if checked else 'failed'} with CheckpointWriteError ('the disk is "
           "full'), no hang; step 2 was not deleted and restores cleanly")
  finally:
    # orbax may still hold files open for a moment: fall back to a lazy unmount so no mount leaks.
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
      subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_resumed_run_sees_the_same_batches(tmp_path, monkeypatch):
  """Item 6: the input position is the checkpointed step; record the labels fed at every step."""
  fed = []
  orig = Trainer.global_batch
  monkeypatch.setattr(Trainer, "global_batch", lambda self, b: (fed.append(np.asarray(b["label"]).copy()),
                                                                orig(self, b))[1])
  c = tiny_config(**{"train.steps": 6, "train.ckpt_every": 3})
  train(c, str(tmp_path / "a"), log=QUIET)
  straight, fed[:] = list(fed), []
  train(tiny_config(**{"train.steps": 3, "train.ckpt_every": 3}), str(tmp_path / "b"), log=QUIET)
  train(c, str(tmp_path / "b"), log=QUIET)
  assert len(fed) == 6 and all(np.array_equal(a, b) for a, b in zip(fed, straight))


def test_mesh_change_on_restore_and_fsdp_sharding(tmp_path):
  """Checkpoint on (8,1,1); continue on (8,1,1), (2,4,1) and (1,8,1). Same losses up to float32
  reduction order (rtol 1e-5). On (1,8,1) params and Adam moments are sharded 8 ways."""
  base = {"train.steps": 4, "train.ckpt_every": 4, "mesh.data": 8, "mesh.fsdp": 1, "mesh.model": 1}
  a = str(tmp_path / "a")
  cont = lambda name, d, f: {"workdir": str(tmp_path / name), "copy_from": a,
                             "overrides": dict(base, **{"train.steps": 8, "mesh.data": d, "mesh.fsdp": f})}
  (res, err), = run_processes([{"devices": 8, "report_shardings": True, "runs": [
      {"workdir": a, "overrides": base}, cont("same", 8, 1), cont("fsdp4", 2, 4), cont("fsdp8", 1, 8)]}])
  _, same, fsdp4, fsdp8 = res["runs"]
  assert same["steps"] == fsdp4["steps"] == fsdp8["steps"] == list(range(1, 9))
  np.testing.assert_allclose(fsdp4["losses"][4:], same["losses"][4:], rtol=1e-5)
  np.testing.assert_allclose(fsdp8["losses"][4:], same["losses"][4:], rtol=1e-5)
  assert "could not be restored" not in err
  for kind in ("params", "opt_state"):
    leaves = res["shardings"][kind]
    total = sum(np.prod(l["shape"]) * l["itemsize"] for l in leaves)
    per_device = sum(np.prod(l["shard"]) * l["itemsize"] for l in leaves)
    for l in leaves:
      expect = np.prod(l["shape"]) // (8 if "fsdp" in l["spec"] else 1)
      assert np.prod(l["shard"]) == expect, l
    assert any("fsdp" in l["spec"] for l in leaves)
    assert per_device < 0.25 * total, (kind, per_device, total)
  record("restore onto another mesh: (8,1,1) -> (2,4,1) and (1,8,1)",
         "restored and continued 4 steps; losses equal to the (8,1,1) continuation within rtol 1e-5 "
         "(float32 reduction order); on (1,8,1) params and Adam moments hold 1/8 per device")


def test_rule_naming_missing_mesh_axis_is_a_clear_error():
  from adaflow.parallel import logical_shardings, make_mesh
  from adaflow.parallel.rules import LOGICAL_AXIS_RULES
  tr = Trainer(tiny_config(), "/tmp/unused", QUIET)
  boxed = jax.eval_shape(tr.objective.init, jax.random.PRNGKey(0))
  bad = tuple(r if r[0] != "embed" else ("embed", "fdsp") for r in LOGICAL_AXIS_RULES)
  with pytest.raises(ValueError, match=r"'embed' -> 'fdsp' names mesh axes \['fdsp'\]"):
    logical_shardings(boxed, make_mesh(tiny_config().mesh), rules=bad)


def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
  from adaflow.train.metrics_log import MetricWriter
  w = MetricWriter(str(tmp_path), enabled=True)
  for s in range(1, 8):
    w.write(s, {"loss": float(s)})
  w.write(5, {"fd": 1.0}, kind="eval")
  with open(w.path, "a") as f:
    f.write('{"step": 8, "kind": "tr')          # torn by a kill mid-write
  assert w.drop_after(4) == 5                    # steps 5, 6, 7, the eval at 5, the torn line
  assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4]
  assert read_metrics(str(tmp_path), kind="eval") == []
  assert w.drop_after(4) == 0
  w.close()


def test_workdir_of_another_model_is_refused_and_left_untouched(tmp_path):
  """Resuming (or sampling) a workdir with a config that builds another model (here another width;
  e.g. a dataset whose classes changed) used to skip every checkpoint as unreadable and train a
  fresh model over the old run; it is now one clear error before anything compiles, and the
  workdir keeps its checkpoints and config.json."""
  from adaflow.train.loop import load_trainer_and_params
  w = str(tmp_path / "w")
  train(tiny_config(**{"train.steps": 2}), w, log=QUIET)
  before = (steps_of(w), open(os.path.join(w, "config.json")).read())
  other = tiny_config(**{"train.steps": 4, "model.hidden_size": 48})
  with pytest.raises(ValueError, match=r"holds a different model than this config builds \(shapes \(stored vs needed\) (params/)?block_0/"):
    train(other, w, log=QUIET)
  with pytest.raises(ValueError, match="holds a different model"):
    load_trainer_and_params(w, other)
  assert (steps_of(w), open(os.path.join(w, "config.json")).read()) == before
  assert int(train(tiny_config(**{"train.steps": 3}), w, log=QUIET).step) == 3   # its own config resumes
  # --init from that run into a new workdir with the other width: one line naming --init (it was a Flax
  # shape error when the first step was traced).
  _, params, _ = load_trainer_and_params(w)
  with pytest.raises(ValueError, match=r"--init: its parameters are not this config's model \(shapes .*block_0/"):
    train(other, str(tmp_path / "fine_tune"), init_params=params, log=QUIET)
  assert not steps_of(str(tmp_path / "fine_tune"))
