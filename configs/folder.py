"""Your own images: a DiT on any folder of images, 32x32 RGB, CPU-sized (the quick-start recipe).

adaflow train --config configs/folder.py --config.data.data_dir=/my/photos --workdir runs/photos

A flat folder of images (photos of any size: ADM's center crop to 32x32) trains an unconditional
model; a folder of class subfolders trains a class-conditional one (add
`--config.sample.cfg_scale=3` for guidance there; without labels guidance is refused). At the end
it writes a sample grid and `eval.json`: the FD of the exemplar network's features (no labels;
adaflow/eval/classifier.py) or, with classes, of the classifier's, and then class accuracy.
"""
from adaflow.config_defaults import base_config


def get_config():
  c = base_config()
  c.name = "folder"
  c.data.name = "folder"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.crop = "center"          # any image size: box-halve, resize the short side, center-crop (ADM)
  c.data.random_flip = True
  c.model.patch_size = 4          # 64 tokens
  c.model.hidden_size = 128
  c.model.depth = 4
  c.model.num_heads = 4
  c.train.steps = 2500
  c.train.batch_size = 128
  c.train.lr = 1e-3
  c.train.warmup_steps = 200
  c.train.schedule = "cosine"
  c.train.final_lr_fraction = 0.1
  c.train.ckpt_every = 500
  c.train.log_every = 100
  c.train.ema_decay = 0.999
  c.sample.method = "heun"
  c.sample.steps = 16
  c.sample.cfg_scale = 1.0        # no guidance: works with and without labels
  c.eval.at_end = True
  c.eval.num_samples = 1000
  return c
