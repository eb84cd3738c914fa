"""The evidence testbed: class-conditional DiT on the embedded `crops` photographs, 32x32 RGB.

Photo crops carry texture (grass, brick, coins, retina vessels) that few-step ODE sampling blurs,
so sample quality depends on sampling compute here, unlike the digits (where FD at 4 Heun steps
already equals FD at 64). One dense model is trained once with this config, cached as a workdir,
and every method's arm starts from it (`python -m experiments.frontier`, whose method settings are
configs/frontier_crops32.py).

adaflow train --config configs/testbed_crops32.py --workdir runs/testbed_dense

`get_config("smoke")` (`--config configs/testbed_crops32.py:smoke`): a smaller DiT trained for 30
steps, the base of `python -m experiments.frontier --smoke` (a pipeline check; numbers mean nothing).
"""
from adaflow.config_defaults import base_config


def get_config(arg=None):
  if arg not in (None, "smoke"):
    raise ValueError(f"configs/testbed_crops32.py takes no argument or 'smoke', got {arg!r}")
  c = base_config()
  c.name = "testbed_crops32"
  c.data.name = "crops"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_crops = 65536       # crop positions are deterministic per index: more distinct crops per epoch
  c.data.random_flip = True
  c.model.patch_size = 4         # 64 tokens
  c.model.hidden_size = 128
  c.model.depth = 4
  c.model.num_heads = 4
  c.train.steps = 12000
  c.train.batch_size = 64
  c.train.lr = 1e-3
  c.train.warmup_steps = 200
  c.train.schedule = "cosine"
  c.train.final_lr_fraction = 0.1
  c.train.ckpt_every = 500
  c.train.log_every = 100
  c.train.ema_decay = 0.9995
  c.sample.method = "heun"
  c.sample.steps = 32
  c.sample.cfg_scale = 2.0
  c.eval.at_end = False
  c.eval.num_samples = 2000
  if arg == "smoke":
    c.model.depth, c.model.hidden_size, c.model.num_heads = 2, 64, 2
    c.train.steps, c.train.batch_size, c.train.warmup_steps = 30, 16, 5
    c.train.ckpt_every, c.train.log_every = 30, 10
    c.train.final_samples = False
  return c
