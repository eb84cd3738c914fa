"""Objectives implement one typed interface (adaflow/objectives/base.py): validation is called by
whoever builds them, abilities are declared, constructors do no I/O."""
import pytest

from adaflow.objectives.base import Objective, ObjectiveBase
from adaflow.train.registry import OBJECTIVES, build_objective
from conftest import tiny_config


def test_every_objective_implements_the_protocol():
  for name, cls in OBJECTIVES.items():
    assert issubclass(cls, ObjectiveBase), name
    for member in ("validate", "init", "loss", "after_update", "has_side"):
      assert hasattr(cls, member), f"{name} lacks {member}"
  assert {n for n, c in OBJECTIVES.items() if c.has_side} == {"dqvae", "step_selector"}
  assert {n for n, c in OBJECTIVES.items() if c.has_maps} == {"dqvae", "dq_transformer"}


def test_build_objective_runs_the_objectives_own_checks():
  from adaflow.data import get_info
  c = tiny_config(objective="routed_flow_matching")
  c.routing.bins = (0.9, 0.5)                # no 1.0: the routed objective's check, not a generic one
  with pytest.raises(ValueError, match=r"config\.routing\.bins: must contain 1\.0"):
    build_objective(c, get_info(c.data))
  c = tiny_config(objective="flow_matching")
  c.routing.bins = (0.9, 0.5)                # routing is not used by flow matching: not checked
  obj = build_objective(c, get_info(c.data))
  assert isinstance(obj, Objective)


def test_dqvae_constructor_does_no_io(monkeypatch):
  from adaflow import data as data_lib
  from adaflow.data import get_info
  from adaflow.objectives.dqvae import DQVAEObjective, build_tokenizer
  c = tiny_config(objective="dqvae")
  c.data.channels = 1
  c.dqvae.coarse_stride = 4
  c.dqvae.router = "entropy"
  info = get_info(c.data)
  with pytest.raises(ValueError, match="entropy"):
    build_tokenizer(c.dqvae, info)            # the images are the caller's to load

  def no_io(*args, **kwargs):
    raise AssertionError("the DQ-VAE objective read the dataset")

  monkeypatch.setattr(data_lib, "load_arrays", no_io)
  import numpy as np
  images = np.zeros((4, 16, 16, 1), np.float32)
  obj = DQVAEObjective(c, info, build_tokenizer(c.dqvae, info, images))
  assert obj.tokenizer.router == "entropy"
  with pytest.raises(AssertionError, match="read the dataset"):   # the factory is where loading happens
    build_objective(c, info)
