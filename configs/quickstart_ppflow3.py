"""PPFlow, 3 levels, on the embedded digits (16x16): 4x4 patches for t <= 0.5, 2 rows x 4 columns
for t in (0.5, 0.75], 2x2 (the base patch) for t > 0.75. Same DiT as quickstart_ppflow2.

adaflow train --config configs/quickstart_ppflow3.py --workdir runs/quickstart_ppflow3
"""
import os

from adaflow.config_defaults import load_config_file


def _quickstart():
  """configs/quickstart.py, which this config builds on."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))


def get_config():
  c = _quickstart()
  c.name = "quickstart_ppflow3"
  c.objective = "ppflow"
  c.model.patch_size = 2
  c.model.stages = ((0.5, (4, 4)), (0.75, (2, 4)), (1.0, (2, 2)))
  c.sample.cfg_scales = (3.0, 3.0, 3.0)
  return c
