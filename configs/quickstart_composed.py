"""Every adaptive-compute method in one model, on the embedded digits (16x16): PPFlow-3 stages,
DiffCR routing, timestep-grouped pruned sub-models and an AdaDiff step policy over them.

    adaflow compose --config configs/quickstart_composed.py --workdir runs/composed

The recipe (adaflow/pipelines/recipe.py) trains dense -> PPFlow (convert-stages + fine-tune) ->
routing fine-tune -> grouped pruning + fine-tune -> step selector, each stage resumable in its own
subdirectory. The DiT is the quick start's (width 128, depth 4, 4 heads) at base patch 2, so the
finest stage has 64 tokens (as configs/quickstart_ppflow3.py and quickstart_routed.py). Training
images: (dense + ppflow + routing + grouped steps) x batch = 1400 x 64 by default, small enough
for a 2-core CPU; scale the compose.*_steps fields for more.
"""
import os

from adaflow.config_defaults import load_config_file


def _quickstart():
  """configs/quickstart.py, which this config builds on."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))


def get_config():
  c = _quickstart()
  c.name = "quickstart_composed"
  c.model.patch_size = 2
  c.train.batch_size = 64
  c.train.warmup_steps = 100
  c.train.ckpt_every = 200
  c.train.log_every = 50
  c.eval.num_samples = 500

  c.compose.ppflow = True
  c.compose.stages = ((0.5, (4, 4)), (0.75, (2, 4)), (1.0, (2, 2)))
  c.compose.routing = True
  c.compose.grouped = True
  c.compose.selector = True
  c.compose.dense_steps = 800
  c.compose.ppflow_steps = 200
  c.compose.routing_steps = 200
  c.compose.grouped_steps = 200
  c.compose.selector_steps = 60
  c.compose.selector_batch = 32
  c.compose.finetune_lr = 3e-4
  c.compose.finetune_warmup_steps = 20

  c.routing.bins = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
  c.routing.num_regions = 4
  c.routing.target = 0.6
  c.routing.ratio_loss_weight = 0.3
  c.routing.ratio_lr_scale = 10.0   # ratios move within the short fine-tune (see adaflow.models.routing)

  c.grouped.num_groups = 4
  c.grouped.k = 0.5
  c.grouped.largest = "data"
  c.grouped.rounds = 2
  c.grouped.proposals_per_round = 2
  c.grouped.proxy_samples = 128
  c.grouped.importance_batches = 2

  c.selector.step_set = (4, 8, 16)
  c.selector.quality = "closeness"
  c.selector.beta = 0.01
  c.selector.entropy_coef = 0.01
  return c
