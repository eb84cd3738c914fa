"""One-level DiT-B/4 in pixel space on ImageNet 64x64 (TFDS imagenet_resized/64x64): the dense
baseline of PPFlow (arXiv 2506.23543), TPU scale. 16x16 = 256 tokens per image.

adaflow train --config configs/imagenet64_dense.py --workdir gs://.../dense64 \
    --config.data.data_dir=gs://.../tfds

Paper optimiser defaults (SiT/PPFlow): AdamW lr 1e-4, weight decay 0, EMA 0.9999, label dropout
0.1, uniform t, linear interpolant, velocity prediction. Batch 1024 (the paper uses 256): one
example per core on a v4-1024 / 4 per chip on a v5e-256, 32 per chip on a v4-32; lr kept at
1e-4 (raise with care). Sampling for FID: Heun, 125 steps (250 function evaluations, as the
paper's 250-step FID runs count them), CFG 1.5.
"""
from adaflow.config_defaults import base_config


def get_config():
  c = base_config()
  c.name = "imagenet64_dense"
  c.objective = "flow_matching"
  c.data.name = "tfds:imagenet_resized/64x64"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.random_flip = True
  c.model.size = "B"              # depth 12, width 768, 12 heads
  c.model.patch_size = 4
  c.model.class_dropout = 0.1
  c.model.dtype = "auto"          # bf16 where matmuls are native bf16, else fp32
  c.flow.t_sampler = "uniform"
  c.train.steps = 400_000
  c.train.batch_size = 1024
  c.train.lr = 1e-4
  c.train.weight_decay = 0.0
  c.train.warmup_steps = 0
  c.train.schedule = "constant"
  c.train.grad_clip = 1.0
  c.train.ema_decay = 0.9999
  c.train.ckpt_every = 10_000
  c.train.log_every = 200
  c.train.grid_per_class = 1
  c.sample.method = "heun"
  c.sample.steps = 125
  c.sample.cfg_scale = 1.5
  c.eval.at_end = False
  c.eval.num_samples = 50_000
  return c
