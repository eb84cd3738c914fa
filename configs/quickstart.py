"""Quick start: class-conditional flow-matching DiT on the embedded digits (16x16), CPU, minutes.

adaflow train --config configs/quickstart.py --workdir runs/quickstart
"""
from adaflow.config_defaults import base_config


def get_config():
  c = base_config()
  c.name = "quickstart"
  c.data.name = "digits"
  c.data.image_size = 16
  c.data.channels = 1
  c.model.patch_size = 4
  c.model.hidden_size = 128
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.dtype = "auto"          # bf16 where matmuls are native bf16, else fp32
  c.train.steps = 2500
  c.train.batch_size = 128
  c.train.lr = 1e-3
  c.train.warmup_steps = 200
  c.train.schedule = "cosine"
  c.train.final_lr_fraction = 0.1
  c.train.ckpt_every = 1000
  c.train.log_every = 100
  c.train.ema_decay = 0.999
  c.sample.method = "heun"
  c.sample.steps = 16
  c.sample.cfg_scale = 3.0
  c.eval.at_end = True
  c.eval.num_samples = 1000
  return c
