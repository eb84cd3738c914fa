"""PPFlow, 3 levels, on the embedded digits (16x16): 4x4 patches for t <= 0.5, 2 rows x 4 columns
for t in (0.5, 0.75], 2x2 (the base patch) for t > 0.75. Same DiT as quickstart_ppflow2.

adaflow train --config configs/quickstart_ppflow3.py --workdir runs/quickstart_ppflow3
"""
import importlib.util
import os


def _quickstart():
  """configs/quickstart.py, loaded by path (config files are not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py")
  spec = importlib.util.spec_from_file_location("_adaflow_quickstart_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def get_config():
  c = _quickstart()
  c.name = "quickstart_ppflow3"
  c.objective = "ppflow"
  c.model.patch_size = 2
  c.model.stages = ((0.5, (4, 4)), (0.75, (2, 4)), (1.0, (2, 2)))
  c.sample.cfg_scales = (3.0, 3.0, 3.0)
  return c
