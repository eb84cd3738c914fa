"""A config file for `--config`: `get_config(workdir)` is the config a run stored in
`<workdir>/config.json` (written by `adaflow train`, `compose` and train-then-prune), over
`base_config()` as a checkpoint's config is read back.

adaflow/cli.py passes `--config=<this file>:<workdir>` when a command is given `--config.a.b=value`
overrides and `--workdir` but no `--config`, so that a finished run's settings can be changed
without its config file, e.g. `adaflow eval --workdir W --config.eval.num_samples=5000`.
"""
from __future__ import annotations

import os

from adaflow import storage
from adaflow.config_defaults import merged_config


def get_config(workdir: str):
  path = os.path.join(workdir, "config.json")
  if not storage.exists(path):
    raise ValueError(f"--config.<field> overrides without --config change the run's stored {path}, which does "
                     "not exist; pass --config=<the run's config file> as well")
  try:
    return merged_config(storage.read_json(path))
  except ValueError as e:   # a field this version does not declare, or a file that is not JSON
    raise ValueError(f"{path}: {e}") from e
