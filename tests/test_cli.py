"""The `adaflow` command line: help, version, suggestions, one-line user errors (exit 2) on one
and on two processes (bad input, a full or unwritable disk), tracebacks for bugs and with --debug /
ADAFLOW_DEBUG, the `fid` flags writing into config.eval."""
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading

import pytest

from adaflow import cli
from adaflow.cli import COMMANDS
from adaflow.commands import fid
from adaflow.commands.common import Command
from adaflow.errors import UserError, is_user_error

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(autouse=True)
def _restore_report_filters():
  """cli.main keeps its full-disk report filters installed when a command ends in a disk error
  (the process is ending: exit handlers may still report it); an in-process test does not end the
  process, so the filters and hooks are put back for the tests after it."""
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  saved = [list(lg.filters) for lg in loggers], sys.unraisablehook, threading.excepthook
  yield
  for lg, filters in zip(loggers, saved[0]):
    lg.filters[:] = filters
  sys.unraisablehook, threading.excepthook = saved[1], saved[2]
CLI_CONFIG = os.path.join(HERE, "tiny_cli_config.py")


def _main(argv, capsys):
  cli.FLAGS.unparse_flags()   # absl keeps values across parses (e.g. an earlier --debug)
  with pytest.raises(SystemExit) as e:
    cli.main(["adaflow"] + argv)
  out, err = capsys.readouterr()
  return e.value.code, out, err


def test_help_lists_every_command_with_one_line(capsys):
  code, out, _ = _main(["--help"], capsys)
  assert code == 0
  for name in COMMANDS:
    line = [ln for ln in out.splitlines() if ln.strip().startswith(name + "  ")]
    assert line and len(line[0].split(name, 1)[1].strip()) > 10, name


def test_command_help_shows_only_its_flags(capsys):
  code, out, _ = _main(["train", "--help"], capsys)
  assert code == 0
  shown = {ln.split(":")[0].strip()[2:] for ln in out.splitlines() if ln.startswith("  --")}
  assert shown == set(COMMANDS["train"].flags) | {"debug"}
  assert "fid_batch" not in out and "verbosity" not in out and "logtostderr" not in out
  code, out, _ = _main(["eval", "fid", "-h"], capsys)
  assert code == 0 and "--fid_batch" in out and "--init" not in out
  assert "--fid_random_inception: >= 0: random Inception weights" in out and "-1 = off; sets config.eval." in out
  for name, command in COMMANDS.items():   # every row of the table names flags that exist
    assert command.name == name and cli.command_help(name).count("\n  --") == len(command.flags) + 1, name


def test_mistyped_command_suggests_the_nearest(capsys):
  code, _, err = _main(["trian", "--workdir=x"], capsys)
  assert code == 2 and "did you mean `adaflow train`" in err
  code, _, err = _main(["eval", "fdi"], capsys)
  assert code == 2 and "`adaflow eval fid`" in err
  assert err.count("\n") == 1


def test_a_flag_of_another_command_is_one_line_not_ignored(capsys, tmp_path):
  """absl parses every command's flags: `adaflow eval --num 1` evaluated config.eval.num_samples
  images and `adaflow train --steps 5` trained the config's steps, each ignoring the flag."""
  for argv, flag in ((["eval", f"--workdir={tmp_path}", "--num=1"], "num"),
                     (["train", f"--workdir={tmp_path}", "--steps=5"], "steps"),
                     (["convert-stages", f"--workdir={tmp_path}", "--out=x", "--fid_batch=3"], "fid_batch")):
    code, _, err = _main(argv, capsys)
    assert code == 2 and err.startswith(f"error: --{flag}: `adaflow {argv[0]}` has no such flag"), err
    assert "--config.<field>=value" in err and err.count("\n") == 1
  assert os.listdir(tmp_path) == []


def test_eval_fid_counts_checked_before_the_checkpoint_is_read(capsys, tmp_path):
  """`--num 1` / `--fid_ref_num 1` failed after sampling and feature extraction; now one line first
  (the workdir here holds no run: nothing is read)."""
  common = [f"--workdir={tmp_path}", f"--config={CLI_CONFIG}",
            "--ref=dataset", "--fid_random_inception=0"]
  for extra, want in ((["--num=1"], "--num=1: FID needs >= 2 images"),
                      (["--num=8", "--fid_ref_num=1"], "--fid_ref_num=1: --ref=dataset needs >= 2 reference images"),
                      (["--num=8", "--fid_shard=0"], "--fid_shard=0: must be >= 1")):
    code, _, err = _main(["eval", "fid"] + common + extra, capsys)
    assert code == 2 and err.startswith(f"error: {want}"), err
  assert os.listdir(tmp_path) == []


def test_a_config_file_that_does_not_load_is_one_line(tmp_path):
  """A missing file, a syntax or name error in it, no get_config(), or a get_config() that does not
  return a ConfigDict: one line naming --config and exit 2 (tracebacks before)."""
  files = {"syntax.py": "def get_config(:\n", "name.py": "def get_config():\n  return undefined_name\n",
           "no_get.py": "x = 1\n", "plain_dict.py": "def get_config():\n  return {'train': {}}\n"}
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  expected = {"syntax.py": "running the config file failed (SyntaxError: invalid syntax",
              "name.py": "running the config file failed (NameError: name 'undefined_name' is not defined)",
              "no_get.py": "the file defines no get_config()",
              "plain_dict.py": "get_config() returned a dict, not an ml_collections ConfigDict",
              "missing.py": "missing.py: cannot load it ([Errno 2] No such file or directory"}
  for name, message in expected.items():   # one process each: a process loads one config file
    (code, _, err), = _run(["train", f"--config={tmp_path / name}", f"--workdir={tmp_path / 'w'}"])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --config") and message in err, (name, err)
  assert not (tmp_path / "w").exists()


def test_version(capsys):
  code, out, _ = _main(["--version"], capsys)
  assert code == 0 and out.strip() == f"adaflow {cli.version()}" and cli.version()[0].isdigit()


def test_user_error_is_one_line_and_exit_2_bug_keeps_traceback(capsys, monkeypatch):
  def bad():
    raise UserError("config.train.lr: must be positive, got -1.0")
  monkeypatch.setitem(COMMANDS, "train", Command("train", bad))
  code, _, err = _main(["train"], capsys)
  assert code == 2 and err == "error: config.train.lr: must be positive, got -1.0\n"
  monkeypatch.setenv("ADAFLOW_DEBUG", "1")
  with pytest.raises(UserError):
    cli.main(["adaflow", "train"])
  monkeypatch.delenv("ADAFLOW_DEBUG")
  with pytest.raises(UserError):
    cli.main(["adaflow", "train", "--debug"])

  def bug():
    raise ValueError("an internal shape mismatch")   # raised outside adaflow/: a bug, not bad input
  monkeypatch.setitem(COMMANDS, "train", Command("train", bug))
  with pytest.raises(ValueError, match="internal"):
    cli.main(["adaflow", "train"])


@pytest.mark.parametrize("code,fix", [(errno.ENOSPC, "No space left on device; free space there"),
                                      (errno.EACCES, "Permission denied; free space there or make it writable")])
def test_full_or_unwritable_disk_is_one_line_and_exit_2(capsys, monkeypatch, code, fix):
  def write():
    raise OSError(code, os.strerror(code), "/runs/w/samples/grid.png")
  monkeypatch.setitem(COMMANDS, "sample", Command("sample", write))
  exit_code, _, err = _main(["sample"], capsys)
  assert exit_code == 2 and err.count("\n") == 1 and err.startswith(f"error: /runs/w/samples/grid.png: {fix}")
  assert err.endswith("then rerun: checkpoints written so far are kept and training resumes from the latest "
                      "checkpoint\n")

  def bug():
    raise OSError(errno.EBADF, "Bad file descriptor")   # not a disk the user can fix: a bug
  monkeypatch.setitem(COMMANDS, "sample", Command("sample", bug))
  with pytest.raises(OSError, match="Bad file"):
    cli.main(["adaflow", "sample"])


def test_is_user_error_by_origin():
  import numpy as np
  from adaflow.flow.samplers import time_grid
  try:
    time_grid(0)
  except ValueError as e:
    assert is_user_error(e)
  try:
    np.zeros(3).reshape(2)
  except ValueError as e:
    assert not is_user_error(e)
  assert not is_user_error(RuntimeError("x"))


def test_overrides_without_config_change_the_runs_stored_config(tmp_path, capsys, monkeypatch):
  """`--config.a.b=value` with `--workdir` and no `--config` overrides the run's config.json (it
  was "unknown flag --config.sample.steps"); a workdir without one, a config.json this version cannot
  read and a config file whose get_config() raises are each one line."""
  from conftest import tiny_config
  from adaflow.commands import core
  from adaflow.train.loop import train
  w = tmp_path / "w"
  train(tiny_config(**{"train.steps": 1, "train.ckpt_every": 1}), str(w), log=lambda m: None)

  def run(args):   # ml_collections reads the --config.* overrides from sys.argv, as in the installed CLI
    monkeypatch.setattr(sys, "argv", ["adaflow", *args])
    return _main(args, capsys)
  seen = []
  real = core.generate_images
  monkeypatch.setattr(core, "generate_images", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
  code, _, err = run(["sample", "--workdir", str(w), "--config.sample.method=heun", "--config.sample.steps=3",
                      "--num=4", f"--out={tmp_path / 's.png'}"])
  assert code == 0, err
  assert [(k["method"], k["steps"]) for k in seen] == [("heun", 3)]          # config.json says euler, 2
  assert json.loads((w / "config.json").read_text())["sample"]["steps"] == 2  # the stored file is unchanged
  # Given --config, or a command without --workdir: the arguments are left as they are.
  assert cli.with_stored_config("sample", ["--config=c.py", f"--workdir={w}", "--config.seed=1"])[0] == "--config=c.py"
  assert cli.with_stored_config("convert", ["--config.seed=1"]) == ["--config.seed=1"]
  code, _, err = run(["eval", f"--workdir={tmp_path / 'none'}", "--config.eval.num_samples=8"])
  assert code == 2 and err.count("\n") == 1 and "none/config.json, which does not exist" in err and "--config=" in err
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "config.json").write_text('{"model": {"widht": 3}}')
  code, _, err = run(["eval", f"--workdir={tmp_path / 'bad'}", "--config.eval.num_samples=8"])
  assert code == 2 and err.count("\n") == 1 and "bad/config.json: config.model.widht: unknown field" in err
  code, _, err = run(["sample", f"--workdir={w}", f"--config={ROOT}/configs/testbed_crops32.py:bad"])
  assert code == 2 and err.count("\n") == 1 and "get_config() failed (ValueError: configs/testbed_crops32.py takes" in err


def _run(args, env=None, processes=1, timeout=240, prog=("-m", "adaflow.cli")):
  """`python <prog> <args>` as `processes` JAX processes; [(returncode, stdout, stderr)]."""
  from test_multiprocess import _env, free_port
  coord = f"127.0.0.1:{free_port()}"
  procs = []
  for i in range(processes):
    e = _env()
    e.pop("ADAFLOW_DEBUG", None)
    e.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT + os.pathsep + e.get("PYTHONPATH", ""), **(env or {}))
    if processes > 1:
      e.update(ADAFLOW_COORDINATOR=coord, ADAFLOW_NUM_PROCESSES=str(processes), ADAFLOW_PROCESS_ID=str(i),
               JAX_NUM_CPU_DEVICES="1")
    procs.append(subprocess.Popen([sys.executable, *prog] + args, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=e, cwd=ROOT))
  out = []
  for p in procs:
    try:
      o, r = p.communicate(timeout=timeout)
    finally:
      if p.poll() is None:
        p.kill()
    out.append((p.returncode, o, r))
  return out


def test_config_errors_print_one_line_in_a_subprocess(tmp_path):
  common = [f"--config={CLI_CONFIG}", f"--workdir={tmp_path / 'w'}"]
  (code, _, err), = _run(["train"] + common + ["--config.train.lr=-1"])
  assert code == 2 and err.strip().splitlines() == ["error: config.train.lr: must be positive, got -1.0"]
  (code, _, err), = _run(["train"] + common + ["--config.data.nam=x"])
  assert code == 2 and len(err.strip().splitlines()) == 1 and 'Did you mean "name"' in err
  (code, _, err), = _run(["train"] + common + ["--config.train.lr=-1"], env={"ADAFLOW_DEBUG": "1"})
  assert code == 1 and "Traceback" in err and "must be positive" in err
  (code, _, err), = _run(["sample"] + common + ["--num=0"])      # refused before the workdir is read
  assert code == 2 and err.strip().splitlines() == ["error: flag --num=0: 0 is not a positive integer"]
  (code, _, err), = _run(["sample"] + common + ["--steps=0"])
  assert code == 2 and err.strip().splitlines() == ["error: flag --steps=0: 0 is not a positive integer"]


def test_user_error_on_two_processes_every_process_exits_2(tmp_path):
  outs = _run(["train", f"--config={CLI_CONFIG}", f"--workdir={tmp_path / 'w'}", "--config.train.lr=-1"],
              processes=2)
  for code, _, err in outs:
    assert code == 2 and err.strip().splitlines()[-1] == "error: config.train.lr: must be positive, got -1.0"
    assert "Traceback" not in err


# `adaflow` with every checkpoint write failing as on a full disk (the writer raises ENOSPC).
FULL_DISK = """import errno, sys
import orbax.checkpoint as ocp
def full(*a, **k):
  raise OSError(errno.ENOSPC, "No space left on device")
ocp.CheckpointManager.save = full
from adaflow import cli
cli.main(["adaflow"] + sys.argv[1:])
"""


@contextlib.contextmanager
def small_tmpfs(path, size: str):
  """`path` as a tmpfs of `size` (a really full disk), or None where this user cannot mount one."""
  path.mkdir()
  if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode != 0:
    yield None
    return
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_the_cli_starts_xla_with_adaflows_cpu_settings_and_says_so(tmp_path):
  """`adaflow` adds its XLA:CPU setting for this machine to the user's XLA_FLAGS before the backend
  starts: the start-up line names it, and where it applies no dot of the compiled programs (XLA's
  own dump) went to YNNPACK. (The user's own YNNPACK setting winning: tests/test_precision.py.)"""
  from adaflow.parallel import precision
  dump = tmp_path / "hlo"
  user = f"--xla_dump_to={dump} --xla_dump_hlo_as_text --xla_dump_hlo_pass_re=^$"
  applied, _ = precision.xla_cpu_defaults(user, precision.cpu_flags(), precision.jaxlib.version.__version__,
                                          "cpu", precision.accelerator_plugin())      # _run sets JAX_PLATFORMS=cpu
  (code, out, err), = _run(["train", f"--config={CLI_CONFIG}", f"--workdir={tmp_path / 'w'}", "--config.train.steps=1",
                            "--config.train.final_samples=False", "--config.eval.at_end=False"], env={"XLA_FLAGS": user})
  assert code == 0, err[-2000:]
  assert f"; XLA:CPU {precision.describe_xla_cpu(applied)}" in out + err
  optimized = [p.read_text() for p in dump.glob("*after_optimizations.txt")]
  assert any(" dot(" in text for text in optimized)          # the train step's programs were dumped
  if precision.NO_NATIVE_BF16_XLA_FLAGS in applied:
    assert not any("ynn_fusion" in text for text in optimized)


def test_full_disk_during_a_checkpoint_write_is_one_line_exit_2_on_every_process(tmp_path):
  """A really full disk where a tmpfs can be mounted (root): 2 MiB hold the tiny model's checkpoints
  2 and 4, and step 6 is refused on both processes before orbax writes (a write failing on one
  process only would leave the other at orbax's barriers). Elsewhere every checkpoint write
  raises ENOSPC. Either way: one line, exit 2, on every process."""
  with small_tmpfs(tmp_path / "disk", "2m") as disk:
    w = (disk or tmp_path) / "w"
    outs = _run(["train", f"--config={CLI_CONFIG}", f"--workdir={w}", "--config.train.ckpt_every=2",
                 "--config.train.steps=40"], processes=2, prog=("-m", "adaflow.cli") if disk else ("-c", FULL_DISK))
    kept = sorted(os.listdir(w / "checkpoints"))
  for code, _, err in outs:
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    noise = [ln for ln in err.splitlines() if not ln.startswith(("error:", "[adaflow] train "))]
    assert code == 2 and not noise and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-3000:]
    if disk:
      assert re.match(rf"error: could not write checkpoint step 6 to {w}/checkpoints: the disk is full \(the "
                      r"checkpoint needs about [0-9.]+ MiB, [0-9.]+ MiB are free; nothing was written\)", errors[0])
      assert kept == ["2", "4"]
    else:
      assert errors[0].startswith(f"error: could not write checkpoint step 2 to {w}/checkpoints: the disk is full")
    assert errors[0].endswith("untouched; then rerun and training resumes from the latest checkpoint")


def test_fid_flags_only_write_into_the_runs_eval_fields(tmp_path, monkeypatch):
  """`adaflow fid --fid_batch=8 --fid_random_inception=-1`: given flags set config.eval.fid_*, the
  others keep the run's values; -1 is "off" (the real weights) for the flag as for the field."""
  from absl import flags
  from conftest import tiny_config
  run = tiny_config(**{"eval.fid_gen_batch": 32, "eval.fid_random_inception": 3, "eval.fid_ref": "dataset"})
  seen = []

  def stop(workdir, config):
    ec = config.eval
    seen.append((ec.fid_batch, ec.fid_gen_batch, ec.fid_random_inception, ec.fid_ref, ec.fid_inception))
    raise RuntimeError("stop before restoring")
  monkeypatch.setattr(fid, "stored_config", lambda workdir: run)
  monkeypatch.setattr(fid, "load_generator", stop)
  weights = tmp_path / "inception.pth"
  weights.write_bytes(b"")
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(["adaflow", f"--workdir={tmp_path}", "--fid_batch=8", f"--inception={weights}"])
    with pytest.raises(RuntimeError, match="stop"):
      fid.fid_main()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["adaflow", f"--workdir={tmp_path}", "--fid_random_inception=-1", f"--inception={tmp_path / 'no.pth'}"])
    with pytest.raises(ValueError, match="FID Inception weights not found"):
      fid.fid_main()
  finally:
    flags.FLAGS.unparse_flags()
  assert seen == [(8, 32, 3, "dataset", str(weights))] and run.eval.fid_random_inception == -1


def test_sample_method_steps_cfg_flags_override_the_config(tmp_path, capsys, monkeypatch):
  """`adaflow sample --method --steps --cfg` on a tiny trained run: the flags reach the generator
  (instead of config.sample) and each new solver writes a grid of finite images."""
  import numpy as np
  from PIL import Image
  from conftest import tiny_config
  from adaflow.commands import core
  from adaflow.train.loop import train
  w = str(tmp_path / "w")
  train(tiny_config(**{"train.steps": 1, "train.ckpt_every": 1}), w, log=lambda m: None)
  seen, images = [], {}
  real = core.generate_images

  def spy(*a, **kw):
    seen.append(kw)
    images[kw["method"]] = np.asarray(real(*a, **kw))
    return images[kw["method"]]
  monkeypatch.setattr(core, "generate_images", spy)
  for method in ("ab2", "sde"):
    out = tmp_path / f"{method}.png"
    code, _, err = _main(["sample", f"--workdir={w}", f"--method={method}", "--steps=3", "--cfg=1.5", "--num=4",
                          f"--out={out}"], capsys)
    assert code == 0, err
    assert Image.open(out).size[0] > 0
  assert [(k["method"], k["steps"], k["cfg_scale"]) for k in seen] == [("ab2", 3, 1.5), ("sde", 3, 1.5)]
  assert all(np.isfinite(v).all() for v in images.values())
  code, _, err = _main(["sample", f"--workdir={w}", "--method=rk4"], capsys)
  assert code == 2 and "--method" in err and err.count("\n") == 1
  # An --out that cannot be written is one line before anything samples (it came after sampling).
  for bad, why in ((tmp_path / "ab2.png" / "x.png", "is not writable"), (tmp_path / "x.xyz", "'.xyz'"),
                   (tmp_path / "x.psd", "cannot write")):
    code, _, err = _main(["sample", f"--workdir={w}", "--num=4", f"--out={bad}"], capsys)
    assert code == 2 and err.startswith("error: --out ") and why in err and err.count("\n") == 1, err
  assert len(seen) == 2
  # On 3 devices, which do not divide the run's train batch of 8: sampling needs no train batch, so
  # it loads and gives the 1-device images (it was refused naming config.train.batch_size).
  for devices in (1, 3):
    (code, _, err), = _run(["sample", f"--workdir={w}", "--num=4", f"--out={tmp_path / f'{devices}dev.png'}"],
                           env={"JAX_NUM_CPU_DEVICES": str(devices)})
    assert code == 0, err
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "3dev.png")), np.asarray(Image.open(tmp_path / "1dev.png")))


def test_quiet_write_failures_drops_only_the_reports_of_a_failed_write():
  """The filters behind the one-line full-disk error, without a disk: orbax's disk-error records
  and tensorstore's closed-loop callbacks are dropped, other errors pass; on a disk error the
  filters stay (the process is ending), otherwise they are removed."""
  import asyncio
  import logging
  import threading
  import types
  from adaflow.train import checkpoint as ckpt
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    closed_loop = e
  disk = ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device [os_error_code='28']")
  oom = ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB")   # not a disk
  records, unraisables = [], []
  handler = logging.Handler()
  handler.emit = records.append
  absl_logger = logging.getLogger("absl")

  def report_all():
    for exc in (disk, oom, RuntimeError("Event loop is closed"), closed_loop):
      absl_logger.error("save failed", exc_info=(type(exc), exc, exc.__traceback__))
      sys.unraisablehook(types.SimpleNamespace(exc_type=type(exc), exc_value=exc, exc_traceback=exc.__traceback__,
                                               err_msg=None, object=None))

  hooks = sys.unraisablehook, threading.excepthook
  absl_logger.addHandler(handler)
  sys.unraisablehook = lambda u: unraisables.append(u.exc_value)
  try:
    with ckpt.quiet_write_failures():
      report_all()
    # A closed-loop callback is dropped as an unraisable error only; a disk error in either form.
    assert [str(r.exc_info[1]) for r in records] == [str(oom), "Event loop is closed", "Event loop is closed"]
    assert [str(e) for e in unraisables] == [str(oom), "Event loop is closed"]
    assert not absl_logger.filters and sys.unraisablehook.__name__ == "<lambda>"   # removed again
    with pytest.raises(OSError):
      with ckpt.quiet_write_failures():
        raise OSError(errno.ENOSPC, "No space left on device")
    assert absl_logger.filters and sys.unraisablehook.__name__ != "<lambda>"    # the process is ending: kept
  finally:
    sys.unraisablehook, threading.excepthook = hooks
    absl_logger.removeHandler(handler)
    for name in ("absl", "asyncio"):
      logging.getLogger(name).filters.clear()


def test_runs_that_sample_their_own_way_refuse_solver_flags_and_record_their_own_sampling(tmp_path, capsys,
                                                                                       monkeypatch):
  """A DQ-VAE run samples reconstructions (the DQ-Transformer top-k codes, the step policy its own
  actions): `adaflow sample --steps/--method/--cfg/--edges` would be ignored, so they are one line
  (exit 2) before sampling, and eval.json records how the run sampled, not config.sample's solver
  (it said heun / 16 steps / CFG 2 for these runs); the start-up line names the DQ-VAE's float32."""
  import numpy as np
  from conftest import tiny_config
  from adaflow.eval import generate as generate_lib
  from adaflow.train.loop import load_trainer_and_params, train
  c = tiny_config(objective="dqvae", **{"train.steps": 1, "train.ckpt_every": 1, "train.ema_decay": 0.0})
  c.dqvae.coarse_stride, c.dqvae.width, c.dqvae.embed_dim, c.dqvae.codebook_size = 4, 16, 8, 16
  w = str(tmp_path / "dqvae")
  logged = []
  train(c, w, log=logged.append)
  assert any(line.startswith("compute dtype float32 (the DQ-VAE's encoder, codebook and decoder)") for line in logged)
  capsys.readouterr()    # the training's progress line
  for flags in (["--steps=3"], ["--method=euler", "--cfg=1.5"], ["--edges=insert"]):
    code, _, err = _main(["sample", f"--workdir={w}", "--num=2", *flags], capsys)
    assert code == 2 and err.count("\n") == 1 and "a 'dqvae' run samples its own way" in err, err
    assert all(f.split("=")[0] in err for f in flags)
  assert not os.path.exists(os.path.join(w, "samples"))
  tr, params, _ = load_trainer_and_params(w)
  monkeypatch.setattr(generate_lib, "get_classifier", lambda *a, **k: None)     # scored elsewhere
  monkeypatch.setattr(generate_lib, "evaluate_samples", lambda clf, imgs, labels: {"num": len(imgs)})
  c.eval.num_samples, c.eval.batch_size = 4, 4
  result = generate_lib.evaluate_generator(tr.generator(), params, c, tr.mesh, "unused")
  assert result["num"] == 4 and result["sample_method"] == "dqvae_reconstruction"
  assert not {"sample_steps", "cfg_scale"} & set(result) and np.isfinite(result["images_per_second"])


def test_a_stopped_stage_ends_a_multi_stage_command_with_exit_0(capsys, monkeypatch):
  """`adaflow compose` / a train-then-prune `adaflow train` whose stage a signal stopped: the stage
  has saved its checkpoint (adaflow.pipelines.stages.StageStopped), the command says so and exits 0,
  as `adaflow train` does on SIGTERM (tpu/README.md), instead of a traceback."""
  from adaflow.pipelines.stages import StageStopped

  def stopped():
    raise StageStopped("stage W/routed stopped at step 20 of 30 (checkpoint saved), not marked done; "
                       "run the same command again to resume")
  monkeypatch.setitem(cli.COMMANDS, "compose", Command("compose", stopped, cli.COMMANDS["compose"].flags))
  code, out, err = _main(["compose", "--workdir=/nonexistent"], capsys)
  assert code == 0 and "[adaflow] stage W/routed stopped at step 20 of 30" in out and "Traceback" not in err


def test_sample_with_a_step_policy_writes_the_grid_and_each_images_step_count(tmp_path, capsys):
  """`adaflow sample --selector <policy workdir>` (AdaDiff): a grid and `<out>.json` with each image's
  label and step count (from the policy's step set); a bad --out is one line before any sampling."""
  from conftest import tiny_config
  from conftest import tiny_selector_config
  from adaflow.train.loop import train
  gen, pol = str(tmp_path / "gen"), str(tmp_path / "pol")
  train(tiny_config(**{"train.steps": 1, "train.ckpt_every": 1}), gen, log=lambda m: None)
  train(tiny_selector_config(generator_workdir=gen, **{"train.steps": 1, "train.ckpt_every": 1}), pol, log=lambda m: None)
  out = tmp_path / "grid.png"
  code, stdout, err = _main(["sample", f"--selector={pol}", "--num=5", f"--out={out}"], capsys)
  assert code == 0, err
  summary = json.loads((tmp_path / "grid.json").read_text())
  assert summary["labels"] == [0, 1, 2, 3, 4] and set(summary["steps"]) <= {1, 2} and len(summary["steps"]) == 5
  assert summary["generator_workdir"] == gen and f"wrote {out}" in stdout and out.exists()
  code, _, err = _main(["sample", f"--selector={pol}", "--num=5", f"--out={tmp_path / 'grid.xyz'}"], capsys)
  assert code == 2 and err.startswith("error: --out ") and err.count("\n") == 1, err
