"""PPFlow, 3 levels, DiT-B with base patch 4 in pixel space on ImageNet 64x64 (arXiv 2506.23543).

Same network, data, optimiser and sampler as configs/imagenet64_dense.py; only the patch
schedule differs. Stage token counts: 64 (8x8-pixel patches), 128 (4 rows x 8 columns), 256 (4x4).
Theoretical token cost vs dense: 0.5.

From scratch:
  adaflow train --config configs/imagenet64_ppflow3.py --workdir gs://.../ppflow3_64
From a trained dense run (the paper's recipe; fine-tune for a fraction of the dense budget):
  adaflow convert-stages --workdir gs://.../dense64 --config configs/imagenet64_ppflow3.py --out gs://.../ppflow3_64ft
  adaflow train --config configs/imagenet64_ppflow3.py --workdir gs://.../ppflow3_64ft --config.train.steps=100000
"""
import os

from adaflow.config_defaults import load_config_file


def _dense():
  """configs/imagenet64_dense.py, which this config builds on."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet64_dense.py"))


def get_config():
  c = _dense()
  c.name = "imagenet64_ppflow3"
  c.objective = "ppflow"
  c.model.stages = ((0.5, (8, 8)), (0.75, (4, 8)), (1.0, (4, 4)))
  c.sample.cfg_scales = (1.5, 1.5, 1.5)
  return c
