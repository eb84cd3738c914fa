"""Command registry and the flags every command shares.

Each command registers its entry point with the absl flags it reads, so `adaflow <command> --help`
lists those flags only (absl defines all commands' flags in one global table).
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py); override fields "
                                "with --config.a.b=value.", lock_config=False)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
flags.DEFINE_bool("debug", False, "Show the Python traceback of user errors (also ADAFLOW_DEBUG=1).")

COMMANDS: dict = {}        # name -> fn()
COMMAND_FLAGS: dict = {}   # name -> flag names the command reads (besides --debug)
COMMAND_HELP: dict = {}    # name -> one line for `adaflow --help`


def command(name: str, flag_names=("config", "workdir"), help: str = ""):  # pylint: disable=redefined-builtin
  """Registers `fn()` as `adaflow <name>`; `flag_names` are the flags it reads (for --help), `help`
  its one-line description (default: the first line of fn's docstring)."""
  def deco(fn):
    COMMANDS[name] = fn
    COMMAND_FLAGS[name] = tuple(flag_names)
    COMMAND_HELP[name] = help or (fn.__doc__ or "").strip().split("\n")[0]
    return fn
  return deco


def need(flag: str):
  """Value of a required flag, or a usage error naming it."""
  value = getattr(FLAGS, flag)
  if value is None:
    raise app.UsageError(f"--{flag} is required for this command")
  return value
