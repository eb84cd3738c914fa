"""`adaflow <command> --config configs/x.py --workdir DIR [--config.a.b=value ...]`.

Config files are `ml_collections` ConfigDicts loaded with `config_flags`, so any field can be
overridden on the command line. Commands live in `adaflow/commands/` (one module each).
"""
from __future__ import annotations

import sys

from absl import app

from adaflow import commands  # noqa: F401  registers every command
from adaflow.commands.registry import COMMANDS
from adaflow.parallel.distributed import initialize_runtime


def main(argv=None):
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    print(f"usage: adaflow {{{','.join(sorted(COMMANDS))}}} --config configs/x.py --workdir DIR "
          f"[--config.a.b=value ...]", file=sys.stderr)
    sys.exit(2)
  name = argv.pop(1)
  if len(argv) > 1 and f"{name} {argv[1]}" in COMMANDS:   # two-word commands: `eval fid`
    name = f"{name} {argv.pop(1)}"

  def run(_):
    from absl import logging
    logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
    # One distributed start-up for every command (pods, SLURM, ADAFLOW_*), before any JAX work:
    # sampling and evaluation span all hosts' devices just like training.
    initialize_runtime()
    COMMANDS[name]()

  app.run(run, argv=argv)


if __name__ == "__main__":
  main()
