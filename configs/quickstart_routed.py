"""DiffCR token routing on the embedded digits (16x16): the quick start's DiT (width 128, depth 4)
at patch 2, so each image has 64 tokens, with a learnable kept-token ratio per (layer, timestep
region) pulled toward a mean of 0.75.

    adaflow train --config configs/quickstart_routed.py --workdir runs/quickstart_routed
    # fine-tune from a dense run (routers and ratios added, everything trained jointly):
    adaflow train --config configs/quickstart_routed.py --workdir runs/routed_ft \
        --init runs/quickstart_p2 --config.train.steps=1000
    adaflow inspect ratios --workdir runs/quickstart_routed

Patch 2 rather than the quick start's 4: at patch 4 a 16x16 image has 16 tokens, so a 0.5 ratio
would leave 8 tokens and the per-block fixed costs (adaLN, gather/scatter, kernel launches) would
dominate any saving; 64 tokens give routing something to drop. The matching dense baseline is
`configs/quickstart.py --config.model.patch_size=2` (experiments/bench_routing.py runs both).
"""
import os

from adaflow.config_defaults import load_config_file


def _quickstart():
  """configs/quickstart.py, which this config builds on."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))


def get_config():
  c = _quickstart()
  c.name = "quickstart_routed"
  c.objective = "routed_flow_matching"
  c.model.patch_size = 2
  c.routing.bins = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
  c.routing.num_regions = 4          # even quarters of t: [0, .25], (.25, .5], (.5, .75], (.75, 1]
  c.routing.target = 0.75
  c.routing.ratio_loss_weight = 0.3
  c.routing.scale = "ste"
  return c
