"""The frontier benchmark (issue #25) on the crops 32x32 testbed: each method's settings.

    python -m experiments.frontier --base runs/testbed_dense --reuse
    python -m experiments.frontier --smoke --work /tmp/frontier_smoke

Every arm starts from one dense base trained with configs/testbed_crops32.py, which this config
builds on. experiments/frontier.py lays this config's method sections (`compose`, `routing`,
`grouped`, `selector`) onto the base's own config (model, data, sampling) and fills in what depends
on the base and the command line: `compose.stages` (the coarsest PPFlow schedule whose tokens fit
the width), every fine-tune's steps (`--ft_fraction` of the base's training images), and the step
policy's actions, cost, beta and training steps (`--policy_actions`, `--policy_cost`,
`--policy_beta`, `--selector_steps`).

`get_config("smoke")`: the `--smoke` pipeline check (the testbed's smoke base, 2 groups, a tiny
pruning search and policy batch; numbers mean nothing).
"""
import os

from adaflow.config_defaults import load_config_file


def get_config(arg=None):
  c = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "testbed_crops32.py"), arg)
  smoke = arg == "smoke"
  c.compose.finetune_lr = 3e-4               # every fine-tune: PPFlow, DiffCR, grouped stage 2, composed
  # DiffCR (arXiv 2412.16822): learned kept ratio per (layer, timestep region), pulled to the target.
  c.routing.bins = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
  c.routing.num_regions = 4
  c.routing.target = 0.6
  c.routing.ratio_loss_weight = 0.3
  c.routing.ratio_lr_scale = 10.0   # ratios move within a short fine-tune (see adaflow.models.routing)
  c.routing.scale = "weight"        # the router weight scales the MLP update, as its pseudocode
  # Train-then-prune (arXiv 2312.13307): timestep groups, each pruned to k of the base.
  c.grouped.num_groups = 2 if smoke else 4
  c.grouped.k = 0.5
  c.grouped.largest = "data"
  # AdaDiff step policy (arXiv 2311.14768): per-input features (class embedding + noise statistics).
  c.selector.use_noise_stats = True
  c.compose.selector_batch = 8 if smoke else 32
  if smoke:
    c.selector.quality = "closeness"   # saves training a second (reward) classifier
    c.grouped.rounds, c.grouped.proposals_per_round = 1, 1
    c.grouped.proxy_samples, c.grouped.importance_batches = 16, 1
  return c
