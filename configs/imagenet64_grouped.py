"""Timestep-grouped train-then-prune (arXiv 2312.13307) of DiT-B/4 on ImageNet
64x64 (TFDS imagenet_resized/64x64), TPU scale; the dense baseline is configs/imagenet64_dense.py
at the same total steps (400k x 1024).

adaflow train --config configs/imagenet64_grouped.py --workdir gs://.../grouped64 \
    --config.data.data_dir=gs://.../tfds

Stage 1: 300k dense steps. Pruning: N = 5 groups (equal SNR-dB width over [-20, 20] dB),
budgets (i/N + (N-i)/N k) F with k = 0.5 (average 0.8 F, the paper's ~20% saving), Taylor
importance on 8 batches, importance proposer, 6 rounds x 8 proposals, proxy = held-out flow loss on
1024 examples after 50 fine-tune steps. Stage 2: 20k steps per group (5 x 20k = 100k), so
stage 1 + stage 2 = 400k steps, the dense budget.
"""
import os

from adaflow.config_defaults import load_config_file


def _dense():
  """configs/imagenet64_dense.py, which this config builds on."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet64_dense.py"))


def get_config():
  c = _dense()
  c.name = "imagenet64_grouped"
  c.grouped.enabled = True   # `adaflow train` runs stage 1, pruning, stage 2
  g = c.grouped
  g.num_groups = 5
  g.k = 0.5
  g.largest = "data"
  g.snr_range_db = (-20.0, 20.0)
  g.stage1_steps = 300_000
  g.stage2_steps = 20_000
  g.stage2_lr = 1e-4
  g.stage2_warmup_steps = 500
  g.importance = "taylor"
  g.importance_batches = 8
  g.proposer = "importance"
  g.rounds = 6
  g.proposals_per_round = 8
  g.proxy_samples = 1024
  g.proxy_finetune_steps = 50
  g.proxy_lr = 1e-4
  g.mlp_granularity = 64
  g.allow_block_drop = True
  return c
