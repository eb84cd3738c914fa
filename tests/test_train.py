"""Trainer: a run trains, checkpoints, resumes exactly, and matches across mesh shapes."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny_config
from adaflow.train.loop import train
from adaflow.train.metrics_log import read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))


def run_worker(workdir, overrides, devices=None, timeout=600):
  cmd = [sys.executable, os.path.join(HERE, "train_worker.py"), str(workdir), json.dumps(overrides)]
  if devices:
    cmd.append(str(devices))
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_train_writes_checkpoints_metrics_and_samples(tmp_path):
  c = tiny_config(**{"train.steps": 6, "train.ckpt_every": 3, "train.final_samples": True})
  state = train(c, str(tmp_path), log=lambda m: None)
  assert int(state.step) == 6
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
  rows = read_metrics(str(tmp_path))
  assert [r["step"] for r in rows] == list(range(1, 7))
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert os.path.exists(tmp_path / "samples" / "step_0000006.png")
  assert os.path.isdir(tmp_path / "tb")


def test_loss_decreases(tmp_path):
  c = tiny_config(**{"train.steps": 60, "train.ckpt_every": 60, "train.batch_size": 32, "train.lr": 2e-3,
                     "train.warmup_steps": 5})
  train(c, str(tmp_path), log=lambda m: None)
  losses = [r["loss"] for r in read_metrics(str(tmp_path))]
  assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])


def test_resume_matches_uninterrupted_run(tmp_path):
  """20 steps straight == 10 steps, stop (new process), resume to 20: identical losses."""
  over = {"train.steps": 20, "train.ckpt_every": 10}
  straight = run_worker(tmp_path / "a", over)
  first = run_worker(tmp_path / "b", dict(over, **{"train.steps": 10}))
  resumed = run_worker(tmp_path / "b", over)
  assert len(first["losses"]) == 10 and len(resumed["losses"]) == 20
  assert resumed["losses"] == straight["losses"]          # bit-exact on CPU
  assert resumed["param_sum"] == straight["param_sum"]


SHARDED_OVERRIDES = {"train.steps": 3, "train.ckpt_every": 3, "model.hidden_size": 32, "model.num_heads": 2,
                     "train.batch_size": 8}


@pytest.fixture(scope="module")
def single_device_run(tmp_path_factory):
  return run_worker(tmp_path_factory.mktemp("one"), SHARDED_OVERRIDES, devices=1)


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_step_matches_single_device(tmp_path, mesh, single_device_run):
  over = SHARDED_OVERRIDES
  single = single_device_run
  sharded = run_worker(tmp_path / "many", dict(over, **{"mesh.data": mesh[0], "mesh.fsdp": mesh[1],
                                                       "mesh.model": mesh[2]}), devices=8)
  assert single["devices"] == 1 and sharded["devices"] == 8
  np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=2e-5)
  np.testing.assert_allclose(sharded["param_abs"], single["param_abs"], rtol=2e-5)


# ---- logging: plain lines off a terminal, optional writers ---------------------------------------

def test_log_plain_progress_lines_when_not_a_terminal():
  import io
  from adaflow.train.metrics_log import PlainProgress, progress
  out = io.StringIO()
  bar = progress(10, 0, stream=out)
  assert isinstance(bar, PlainProgress)
  for step in range(10):
    if (step + 1) % 5 == 0:
      bar.set_postfix(loss="0.1234", img_s="1200")
    bar.update(1)
  bar.close()
  text = out.getvalue()
  assert "\r" not in text
  lines = text.splitlines()
  assert len(lines) == 2 and lines[0].startswith("[adaflow] train 5/10 (50%) loss=0.1234 img_s=1200 eta ")
  assert lines[1].startswith("[adaflow] train 10/10 (100%)")

  class Tty(io.StringIO):
    def isatty(self):
      return True
  assert not isinstance(progress(10, 0, stream=Tty()), PlainProgress)   # a terminal gets the bar


def test_log_writers_selected_but_not_installed_fail_in_one_line(tmp_path, monkeypatch):
  import importlib.util
  from adaflow.errors import UserError
  from adaflow.train.metrics_log import parse_writers
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
  monkeypatch.delitem(sys.modules, "wandb", raising=False)
  with pytest.raises(UserError, match=r"train.writers: 'wandb' is selected but the wandb package is not installed; `pip install wandb`"):
    parse_writers("wandb")
  with pytest.raises(UserError, match="unknown writer 'mlflow'"):
    parse_writers("clu, mlflow")
  assert parse_writers("") == ()
  c = tiny_config(**{"train.writers": "wandb"})
  with pytest.raises(UserError, match="wandb"):
    train(c, str(tmp_path), log=lambda m: None)
  assert not os.path.exists(tmp_path / "checkpoints")   # nothing started


def test_log_writers_wandb_and_clu_receive_every_row(tmp_path, monkeypatch):
  """Stand-in wandb and clu modules (neither is a dependency) record what MetricWriter sends."""
  import types
  from adaflow.train.metrics_log import MetricWriter
  calls = []

  class Run:
    def log(self, scalars, step):
      calls.append(("wandb", step, scalars))

    def finish(self):
      calls.append(("wandb finish",))

  wandb = types.ModuleType("wandb")
  wandb.init = lambda **kw: calls.append(("wandb init", kw["project"], kw["resume"])) or Run()

  class CluWriter:
    def write_scalars(self, step, scalars):
      calls.append(("clu", step, scalars))

    def flush(self):
      pass

    def close(self):
      calls.append(("clu close",))

  clu = types.ModuleType("clu")
  clu.metric_writers = types.ModuleType("clu.metric_writers")
  clu.metric_writers.create_default_writer = lambda logdir, asynchronous: CluWriter()
  monkeypatch.setitem(sys.modules, "wandb", wandb)
  monkeypatch.setitem(sys.modules, "clu", clu)
  monkeypatch.setitem(sys.modules, "clu.metric_writers", clu.metric_writers)
  w = MetricWriter(str(tmp_path), enabled=True, writers="wandb,clu", wandb_project="p")
  w.write(5, {"loss": 0.5})
  w.write(5, {"fd": 1.0}, kind="eval")
  w.close()
  assert calls == [("wandb init", "p", "allow"), ("wandb", 5, {"train/loss": 0.5}), ("clu", 5, {"train/loss": 0.5}),
                   ("wandb", 5, {"eval/fd": 1.0}), ("clu", 5, {"eval/fd": 1.0}), ("wandb finish",), ("clu close",)]
  assert len(read_metrics(str(tmp_path))) == 1


TENSORBOARD_WITHOUT_TORCH = """import os, sys
from adaflow.train import metrics_log
writer = metrics_log._summary_writer(sys.argv[1])
writer.add_scalar("loss", 0.5, 1)
writer.close()
assert "torch" not in sys.modules, "tensorboardX imported torch"
import torch   # importable afterwards: nothing of the hiding is left
assert torch.zeros(2).sum().item() == 0.0
print(sorted(os.listdir(sys.argv[1])))
"""


def test_tensorboard_writer_does_not_import_torch(tmp_path):
  """tensorboardX imports torch when it is installed (1.1 s of every `adaflow train` start); the
  writer hides torch during that import, writes its event file, and torch imports normally after."""
  pytest.importorskip("torch")
  out = subprocess.run([sys.executable, "-c", TENSORBOARD_WITHOUT_TORCH, str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].startswith("events.out.tfevents.") and os.path.getsize(tmp_path / files[0]) > 0
