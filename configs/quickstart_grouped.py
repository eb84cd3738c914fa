"""Timestep-grouped train-then-prune (arXiv 2312.13307) on the quick-start digits setting.

adaflow train --config configs/quickstart_grouped.py --workdir runs/quickstart_grouped

Stage 1 trains the quick-start dense DiT for 1500 steps; pruning carves one sub-model per timestep
group (N = 4 groups equal in SNR dB, budgets (i/N + (N-i)/N k) F with k = 0.5, the full-size model
at the data end); stage 2 fine-tunes each group for 250 steps on its own times. Total training
images = (1500 + 4 * 250) * 128, the same as the dense quick start (2500 * 128).
"""
import os

from adaflow.config_defaults import load_config_file


def _quickstart():
  """configs/quickstart.py, which this config builds on."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))


def get_config():
  c = _quickstart()
  c.name = "quickstart_grouped"
  c.grouped.enabled = True   # `adaflow train` runs stage 1, pruning, stage 2
  c.grouped.num_groups = 4
  c.grouped.k = 0.5
  c.grouped.largest = "data"
  c.grouped.stage1_steps = 1500
  c.grouped.stage2_steps = 250
  c.grouped.stage2_lr = 3e-4
  c.grouped.stage2_warmup_steps = 20
  c.grouped.importance = "taylor"
  c.grouped.proposer = "importance"
  c.grouped.rounds = 4
  c.grouped.proposals_per_round = 4
  c.grouped.mlp_granularity = 32
  return c
