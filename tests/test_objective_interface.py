"""Objectives implement one typed interface (adaflow/objectives/base.py): validation is called by
whoever builds them, abilities are declared, constructors do no I/O."""
import pytest

from adaflow.compose.objective import ComposedObjective
from adaflow.methods import DIT_PRESETS, OTHER_FAMILIES, build_objective
from adaflow.objectives.base import Objective, ObjectiveBase
from conftest import tiny_config


def test_every_objective_implements_the_protocol():
  classes = dict({n: cls for n, (cls, _) in OTHER_FAMILIES.items()}, composed=ComposedObjective)
  for name, cls in classes.items():
    assert issubclass(cls, ObjectiveBase), name
    for member in ("validate", "init", "loss", "after_update", "has_side", "sampler", "describe_compute"):
      assert hasattr(cls, member), f"{name} lacks {member}"
  assert {n for n, c in classes.items() if c.has_side} == {"dqvae", "step_selector"}
  assert {n for n, c in classes.items() if c.has_maps} == {"dqvae", "dq_transformer"}
  # Each says what it computes in and how it samples (eval.json / FID record it); only the composed
  # generator samples with the flow solver's steps / method / CFG scale (`adaflow sample --steps`).
  for name, cls in classes.items():
    assert hasattr(cls, "sampling_record") == (name != "composed"), name    # the composed one's sampler has it
    assert not cls.uses_solver_settings
  from adaflow.compose.generator import ComposedGenerator
  assert ComposedGenerator.uses_solver_settings
  assert ComposedGenerator.sampling_record(8, "heun", 2) == dict(sample_steps=8, sample_method="heun", cfg_scale=2.0)


@pytest.mark.parametrize("name", sorted(set(DIT_PRESETS) - {"composed"}))
def test_every_dit_method_is_the_composed_objective_with_its_preset(name):
  from adaflow.data import get_info
  c = tiny_config(objective=name)
  if name == "ppflow":
    c.model.stages = ((0.5, (4, 8)), (1.0, (4, 4)))      # 32 values per token: no loss-floor warning
  if name == "grouped_finetune":
    c.grouped.t_range = (0.2, 0.6)
  obj = build_objective(c, get_info(c.data))
  assert isinstance(obj, ComposedObjective) and obj.generator.spec.name() == {
      "flow_matching": "dense", "ppflow": "ppflow", "routed_flow_matching": "routing", "grouped_finetune": "dense"}[name]
  assert [(lo, hi) for _, _, lo, hi, _ in obj.cells] == {
      "ppflow": [(0.0, 0.5), (0.5, 1.0)], "grouped_finetune": [(0.2, 0.6)]}.get(name, [(0.0, 1.0)])


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
