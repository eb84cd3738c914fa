"""The flags several commands read, `need`, and `Command`: one row of the command table in
adaflow/cli.py. absl keeps all flags in one global table; a Command names the flags it reads, so
`adaflow <command> --help` lists those only."""
from __future__ import annotations

from typing import Callable, NamedTuple

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py); override fields "
                                "with --config.a.b=value.", lock_config=False)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, samples.")
flags.DEFINE_bool("debug", False, "Show the Python traceback of user errors (also ADAFLOW_DEBUG=1).")
flags.DEFINE_integer("num", 64, "Number of images (`sample`; `fid`: 50000 unless given).", lower_bound=1)
flags.DEFINE_string("out", None, "Output path (`sample`: PNG grid, default <workdir>/samples/cli_step_<step>.png; "
                    "`convert`, `convert-stages`: the workdir to write; `inspect ratios`: the heat map PNG).")


class Command(NamedTuple):
  """`adaflow <name>` runs `fn()` (so does calling the Command), which reads the flags `flags`."""
  name: str
  fn: Callable[[], object]
  flags: tuple = ("config", "workdir")

  def __call__(self):
    return self.fn()

  @property
  def summary(self) -> str:   # its line in `adaflow --help`
    return (self.fn.__doc__ or "").strip().split("\n")[0]


def need(flag: str):
  """Value of a required flag, or a usage error naming it."""
  value = getattr(FLAGS, flag)
  if value is None:
    raise app.UsageError(f"--{flag} is required for this command")
  return value
