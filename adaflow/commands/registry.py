"""Command registry and the flags every command shares."""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=False)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")

COMMANDS: dict = {}


def command(name: str):
  """Registers `fn()` as `adaflow <name>`."""
  def deco(fn):
    COMMANDS[name] = fn
    return fn
  return deco


def need(flag: str):
  """Value of a required flag, or a usage error naming it."""
  value = getattr(FLAGS, flag)
  if value is None:
    raise app.UsageError(f"--{flag} is required for this command")
  return value
