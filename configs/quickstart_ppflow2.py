"""PPFlow, 2 levels, on the embedded digits (16x16): the quick start's DiT (width 128, depth 4)
with base patch 2 (64 tokens in the fine stage) and 4x4-pixel patches (16 tokens) for t <= 0.5.

adaflow train --config configs/quickstart_ppflow2.py --workdir runs/quickstart_ppflow2

Base patch 2 rather than the quick start's 4: with patch 4 the coarse 8x8 stage would have only
2x2 = 4 tokens, and at 16 tokens per image the per-call overhead, not the token count, sets the
cost on CPU. The dense baseline for this config is `configs/quickstart.py` with
`--config.model.patch_size=2` (see experiments/bench_ppflow.py).
"""
import os

from adaflow.config_defaults import load_config_file


def _quickstart():
  """configs/quickstart.py, which this config builds on."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))


def get_config():
  c = _quickstart()
  c.name = "quickstart_ppflow2"
  c.objective = "ppflow"
  c.model.patch_size = 2
  # PPFlow patch schedule, in pixels: (t_end, (patch_h, patch_w)), noise (t = 0) first.
  c.model.stages = ((0.5, (4, 4)), (1.0, (2, 2)))
  c.sample.cfg_scales = (3.0, 3.0)   # one CFG scale per stage
  return c
