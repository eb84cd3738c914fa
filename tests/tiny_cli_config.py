"""`tiny_config` (tests/conftest.py) as a config file for the `adaflow` CLI in subprocess tests,
with the library defaults for what happens after training: the final sample grid and the
evaluation (FD / class accuracy) on.

    adaflow train --config tests/tiny_cli_config.py --workdir W
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import tiny_config  # noqa: E402


def get_config():
  c = tiny_config()
  c.train.final_samples = True
  c.train.grid_per_class = 2
  c.eval.at_end = True
  c.eval.num_samples = 40
  c.eval.batch_size = 16
  return c
