"""The config schema (adaflow/config_defaults.py): every field is settable on the command line,
stored configs are merged onto the schema, unknown fields are refused."""
import os
import sys
import textwrap

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from adaflow import config as config_lib
from adaflow.config_defaults import base_config, merged_config


def _leaves(c, prefix=""):
  """(dotted path, field type, default) of every leaf field of `c`, sections included."""
  for k in sorted(c.keys()):
    v = c[k]
    if isinstance(v, ml_collections.ConfigDict):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", c.get_ref(k).get_type(), v


def _new_value(path: str, kind: type, default):
  """A value of the field's type that differs from its default, and how to write it as a flag."""
  if kind is bool:
    return (not default), str(not default).lower()
  if kind is int:
    v = (default or 0) + 3
    return v, str(v)
  if kind is float:
    v = (default or 0.0) + 0.25
    return v, repr(v)
  if kind is str:
    v = f"/x/{path.replace('.', '_')}"
    return v, v
  if kind is tuple:
    v = ((0.5, (8, 8)), (1.0, (4, 4))) if path.endswith("stages") else (3, 5, 7)
    return v, repr(v)
  raise AssertionError(f"config.{path}: field type {kind} has no command-line form; use bool/int/float/str/tuple")


def _parse(tmp_path, monkeypatch, overrides):
  """`--config=<file returning base_config()>` plus `overrides`, through absl + config_flags as
  adaflow.commands.common defines the flag (config_flags reads the overrides from sys.argv)."""
  path = tmp_path / "schema_config.py"
  path.write_text(textwrap.dedent("""
      from adaflow.config_defaults import base_config

      def get_config():
        return base_config()
  """))
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=False)
  argv = ["adaflow", f"--config={path}"] + list(overrides)
  monkeypatch.setattr(sys, "argv", argv)
  fv(argv)
  return fv.config


def test_every_field_overrides_on_the_command_line(tmp_path, monkeypatch):
  leaves = list(_leaves(base_config()))
  # Every method section is part of the schema, so walking base_config() walks them too.
  sections = {p.split(".")[0] for p, _, _ in leaves}
  assert {"data", "model", "flow", "train", "sample", "eval", "mesh", "routing", "compose", "selector",
          "dqvae", "dq_transformer", "grouped"} <= sections
  unset = [p for p, _, v in leaves if v is None]
  assert {"data.data_dir", "data.channels", "model.stages", "sample.cfg_scales"} <= set(unset)
  expected, argv = {}, []
  for path, kind, default in leaves:
    value, text = _new_value(path, kind, default)
    expected[path] = value
    argv.append(f"--config.{path}={text}")
  config = _parse(tmp_path, monkeypatch, argv)
  for path, value in expected.items():
    node = config
    for part in path.split("."):
      node = node[part]
    assert node == value, f"--config.{path}: got {node!r}, expected {value!r}"
  assert len(expected) > 150


def test_unset_field_takes_a_value_and_the_others_keep_theirs(tmp_path, monkeypatch):
  config = _parse(tmp_path, monkeypatch, ["--config.data.data_dir=/my/images", "--config.data.channels=3"])
  assert config.data.data_dir == "/my/images" and config.data.channels == 3
  assert config.model.stages is None and config.data.image_size == base_config().data.image_size


def test_stored_config_is_merged_onto_the_schema():
  old = base_config().to_dict()
  del old["selector"]                      # a run saved before the section existed
  del old["train"]["keep_every"]
  old["train"]["steps"] = 7
  c = merged_config(old)
  assert c.train.steps == 7 and c.train.keep_every == 0
  assert c.selector.step_set == base_config().selector.step_set
  old["model"]["stages"] = [[0.5, [8, 8]], [1.0, [4, 4]]]   # JSON turns tuples into lists
  assert merged_config(old).model.stages == ((0.5, (8, 8)), (1.0, (4, 4)))


@pytest.mark.parametrize("path", ["train.stepz", "routing.binz", "nonsense"])
def test_unknown_field_is_one_error_naming_it(path):
  given = base_config().to_dict()
  node = given
  for part in path.split(".")[:-1]:
    node = node[part]
  node[path.split(".")[-1]] = 1
  with pytest.raises(ValueError, match=rf"config\.{path}: unknown field"):
    merged_config(given)
  c = base_config()
  with c.unlocked():
    node = c
    for part in path.split(".")[:-1]:
      node = node[part]
    node[path.split(".")[-1]] = 1
  with pytest.raises(ValueError, match=rf"config\.{path}: unknown field"):
    config_lib.validate(c)


def test_every_config_file_uses_only_schema_fields():
  from adaflow.config_defaults import check_known_fields, load_config_file
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  names = sorted(n for n in os.listdir(root) if n.endswith(".py"))
  assert "quickstart.py" in names
  for n in names:
    check_known_fields(load_config_file(os.path.join(root, n)))
  # The method sections always exist; `adaflow train` runs train-then-prune only when asked.
  assert load_config_file(os.path.join(root, "quickstart_grouped.py")).grouped.enabled
  assert not load_config_file(os.path.join(root, "quickstart_composed.py")).grouped.enabled
  assert not load_config_file(os.path.join(root, "quickstart.py")).grouped.enabled
