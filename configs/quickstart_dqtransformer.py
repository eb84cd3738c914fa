"""Quick start, stage 2 of DQ: a DQ-Transformer over the codes of a trained DQ-VAE (crops 32x32).

adaflow train --config configs/quickstart_dqvae.py --workdir runs/dqvae
adaflow train --config configs/quickstart_dqtransformer.py --workdir runs/dqt --tokenizer runs/dqvae
adaflow sample --workdir runs/dqt        # sample grid + <grid>_map.png (coarse/fine maps)
"""
from adaflow.config_defaults import base_config


def get_config():
  c = base_config()
  c.name = "quickstart_dqtransformer"
  c.objective = "dq_transformer"
  c.tokenizer_workdir = ""          # set by --tokenizer
  c.data.name = "crops"             # must match the tokenizer's data settings
  c.data.image_size = 32
  c.data.channels = 3
  c.data.random_flip = True
  c.dq_transformer.width = 128
  c.dq_transformer.depth_pos = 2
  c.dq_transformer.depth_content = 3
  c.dq_transformer.num_heads = 4
  c.dq_transformer.top_k = 32
  c.dq_transformer.temperature = 1.0
  c.train.steps = 2000
  c.train.batch_size = 64
  c.train.lr = 1e-3
  c.train.warmup_steps = 100
  c.train.schedule = "cosine"
  c.train.final_lr_fraction = 0.1
  c.train.ema_decay = 0.999
  c.train.ckpt_every = 500
  c.train.log_every = 100
  c.train.grid_per_class = 4
  c.eval.at_end = True
  c.eval.num_samples = 480
  c.eval.batch_size = 240
  return c
