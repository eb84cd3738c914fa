"""DQ-Transformer on ImageNet 64x64 over an imagenet64_dqvae tokenizer (class-conditional).

adaflow train --config configs/imagenet64_dqtransformer.py --workdir gs://.../dqt64 \
    --tokenizer gs://.../dqvae64 --config.data.data_dir=gs://.../tfds
Sequence length 16*16 + 3 = 259 (padded); position vocabulary 257, content 1024 + EOS.
"""
from adaflow.config_defaults import base_config


def get_config():
  c = base_config()
  c.name = "imagenet64_dqtransformer"
  c.objective = "dq_transformer"
  c.tokenizer_workdir = ""
  c.data.name = "tfds:imagenet_resized/64x64"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.random_flip = True
  c.dq_transformer.width = 768
  c.dq_transformer.depth_pos = 12
  c.dq_transformer.depth_content = 12
  c.dq_transformer.num_heads = 12
  c.dq_transformer.top_k = 400
  c.dq_transformer.temperature = 1.0
  c.train.steps = 400_000
  c.train.batch_size = 256
  c.train.lr = 3e-4
  c.train.warmup_steps = 5000
  c.train.schedule = "cosine"
  c.train.weight_decay = 0.01
  c.train.ema_decay = 0.9999
  c.train.ckpt_every = 5000
  c.train.log_every = 200
  c.train.grid_per_class = 1
  c.eval.at_end = True
  c.eval.num_samples = 10000
  return c
