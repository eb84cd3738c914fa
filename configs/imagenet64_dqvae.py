"""DQ-VAE tokenizer for ImageNet 64x64 (TFDS imagenet_resized/64x64, labelled), TPU/GPU scale.

Coarse regions 8x8 px (8x8 grid), fine cells 4x4 px (16x16 grid): 64..256 codes per image,
160 on average at r = 0.5. Codebook 1024 x 256 as in the paper (EMA 0.99, commitment 0.25),
budget loss gamma 10 to r = 0.5. L1 + L2 + perceptual (adaflow.eval classifier features) + PatchGAN.

adaflow train --config configs/imagenet64_dqvae.py --workdir gs://.../dqvae64 \
    --config.data.data_dir=gs://.../tfds
"""
from adaflow.config_defaults import base_config


def get_config():
  c = base_config()
  c.name = "imagenet64_dqvae"
  c.objective = "dqvae"
  c.data.name = "tfds:imagenet_resized/64x64"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.random_flip = True
  c.dqvae.router = "gumbel"
  c.dqvae.fine_fraction = 0.5
  c.dqvae.budget_weight = 10.0
  c.dqvae.coarse_stride = 8
  c.dqvae.width = 256
  c.dqvae.num_res_blocks = 2
  c.dqvae.embed_dim = 256
  c.dqvae.codebook_size = 1024
  c.dqvae.restart_threshold = 0.01
  c.dqvae.perceptual_weight = 0.1
  c.dqvae.disc_weight = 0.1
  c.dqvae.disc_width = 64
  c.train.steps = 200_000
  c.train.batch_size = 256
  c.train.lr = 2e-4
  c.train.warmup_steps = 2000
  c.train.schedule = "cosine"
  c.train.final_lr_fraction = 0.1
  c.train.b2 = 0.99
  c.train.ema_decay = 0.0
  c.train.ckpt_every = 5000
  c.train.log_every = 200
  c.train.final_samples = True
  c.train.grid_per_class = 1
  c.eval.at_end = False
  return c
