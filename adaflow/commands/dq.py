"""`adaflow sample` on a DQ (DQ-VAE -> DQ-Transformer) workdir also writes `<out>_map.png` via
`sample_map` (`adaflow train --tokenizer` is in core.py)."""
from __future__ import annotations

import os

import jax
import numpy as np

from adaflow.models import dqvae as dq
from adaflow.parallel.host import is_writer
from adaflow.train.images import save_grid

def sample_map(objective, params, labels, seed: int, out: str) -> str:
  """Writes `<out minus .png>_map.png`: rows of images and their coarse/fine maps (red = fine
  region with 4 codes, blue = coarse region with 1 code). Returns the path."""
  labels = np.asarray(labels[:16], np.int32)
  imgs, mask, extra = objective.images_and_maps(params, jax.random.PRNGKey(seed), labels)
  base = extra if extra is not None else imgs    # the map is drawn over the input when there is one
  maps = dq.render_granularity(np.clip(base, -1, 1), mask, objective.layout.coarse_stride)
  rows = [r for r in (extra, np.clip(imgs, -1, 1), maps) if r is not None]
  path = os.path.splitext(out)[0] + "_map.png"
  grid = np.concatenate([np.repeat(r, 3, -1) if r.shape[-1] == 1 else r for r in rows])
  if is_writer():
    save_grid(grid, path, rows=len(rows), upscale=max(1, 64 // imgs.shape[1]))
  return path
