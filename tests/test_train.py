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
