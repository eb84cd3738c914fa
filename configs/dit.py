"""DiT family on a chosen dataset: `--config configs/dit.py:<size>/<patch>` e.g. `S/2`, `B/4`, `XL/2`.

Sizes (depth, width, heads) follow the DiT paper: S (12, 384, 6), B (12, 768, 12),
L (24, 1024, 16), XL (28, 1152, 16); patch 2, 4 or 8. Defaults to 32x32 crops (RGB).
"""
from adaflow.config_defaults import base_config


def get_config(arg: str = "S/2"):
  size, patch = arg.split("/")
  if size not in ("S", "B", "L", "XL") or patch not in ("2", "4", "8"):
    raise ValueError(f"configs/dit.py:<size>/<patch> needs size in S|B|L|XL and patch in 2|4|8, got {arg!r}")
  c = base_config()
  c.name = f"dit_{size}_{patch}"
  c.data.name = "crops"
  c.data.image_size = 32
  c.data.channels = 3
  c.model.size = size
  c.model.patch_size = int(patch)
  c.train.batch_size = 32
  c.train.lr = 1e-4
  c.train.warmup_steps = 0
  c.train.steps = 1000
  c.train.ema_decay = 0.9999
  c.sample.steps = 32
  return c
