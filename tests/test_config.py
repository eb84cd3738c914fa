"""Config validation: impossible settings raise ValueError naming the field, before compiling."""
import pytest

from conftest import tiny_config
from adaflow.train.loop import Trainer, train


@pytest.mark.parametrize("overrides,field", [
    ({"model.patch_size": 3}, "model.patch_size"),
    ({"train.batch_size": 6, "mesh.data": 4}, "mesh"),
    ({"data.name": "imagenet_from_nowhere"}, "data.name"),
    ({"train.steps": -5}, "train.steps"),
    ({"train.lr": 0.0}, "train.lr"),
    ({"sample.method": "rk45"}, "sample.method"),
    ({"flow.interpolant": "ddpm"}, "flow.interpolant"),
    ({"model.hidden_size": 30}, "model.hidden_size"),
    ({"model.size": "Q"}, "model.size"),             # was a KeyError traceback
    # These reached compilation (and trained on, or failed inside the first step or at the last grid):
    ({"model.mlp_ratio": 0.0}, "model.mlp_ratio"),
    ({"model.time_scale": 0.0}, "model.time_scale"),
    ({"flow.logit_std": -1.0}, "flow.logit_std"),
    ({"train.b1": -0.1}, "train.b1"),
    ({"train.b2": 1.5}, "train.b2"),
    ({"train.eps": 0.0}, "train.eps"),
    ({"train.weight_decay": -1e-4}, "train.weight_decay"),
    ({"train.grad_clip": -1.0}, "train.grad_clip"),
    ({"train.final_lr_fraction": 1.5}, "train.final_lr_fraction"),
    ({"train.grid_per_class": 0}, "train.grid_per_class"),
    ({"model.dtype": "int8"}, "model.dtype"),
    ({"model.remat": "everything"}, "model.remat"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "mesh"),
    ({"sample.diffusion_form": "cubic"}, "sample.diffusion_form"),
    ({"sample.diffusion_norm": -1.0}, "sample.diffusion_norm"),
    ({"flow.endpoint_margin": 0.7}, "flow.endpoint_margin"),
    ({"eval.num_samples": 0}, "eval.num_samples"),   # used to fail after training ("need at least one array")
    ({"eval.batch_size": 0}, "eval.batch_size"),
    ({"eval.classifier_steps": 0}, "eval.classifier_steps"),   # the feature network would never train
])
def test_bad_config_raises_before_compile(tmp_path, monkeypatch, overrides, field):
  import jax
  compiled = []
  monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(1))
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    train(tiny_config(**overrides), str(tmp_path))
  assert not compiled
  assert not (tmp_path / "checkpoints").exists()


def test_batch_not_divisible_by_data_axis_names_the_field(tmp_path):
  import jax
  from adaflow import config as config_lib
  c = tiny_config(**{"train.batch_size": 6})
  with pytest.raises(ValueError, match=r"train\.batch_size"):
    config_lib.validate_mesh(c, num_devices=4)


def test_every_config_file_loads_and_validates():
  """Each configs/*.py builds (derived configs load their base through load_config_file) and passes
  the dataset-independent checks."""
  import glob
  import os
  from adaflow import config as config_lib
  from adaflow.config_defaults import load_config_file
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  paths = sorted(glob.glob(os.path.join(root, "*.py")))
  assert len(paths) >= 10
  for path in paths:
    c = load_config_file(path, "S/2") if path.endswith("dit.py") else load_config_file(path)
    config_lib.validate_train(c)
    config_lib.validate_flow(c)
  with pytest.raises(ValueError, match="does not exist"):
    load_config_file(os.path.join(root, "no_such_config.py"))
