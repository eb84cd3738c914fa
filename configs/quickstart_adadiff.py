"""AdaDiff quick start: a per-input step-count policy (REINFORCE) over a frozen quick-start generator.

  adaflow train --config configs/quickstart.py --workdir runs/quickstart            # the generator
  adaflow train --config configs/quickstart_adadiff.py --init runs/quickstart --workdir runs/adadiff
  adaflow sample --selector runs/adadiff --num 80

Only the policy (a 2-layer MLP over the generator's class embedding) is trained; each step
samples the batch at every step count of `selector.step_set` (heun + CFG as the generator's
`sample` config), scores it with `selector.quality` and applies one REINFORCE update.
"""
import os

from adaflow.config_defaults import load_config_file


def _quickstart_config():
  """configs/quickstart.py, which this config builds on."""
  return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))


def get_config():
  c = _quickstart_config()         # same data / model fields as the generator it loads
  c.name = "quickstart_adadiff"
  c.objective = "step_selector"
  c.selector.step_set = (4, 8, 16, 32, 64)
  c.selector.quality = "closeness"   # classifier log p saturates on digits: every count >= 4 is ~100% (see results)
  c.selector.beta = 0.01
  c.selector.entropy_coef = 0.01
  c.train.steps = 150
  c.train.batch_size = 32
  c.train.lr = 3e-3
  c.train.warmup_steps = 10
  c.train.schedule = "constant"
  c.train.ema_decay = 0.0          # the policy itself is what gets sampled (no EMA lag)
  c.train.grad_clip = 1.0
  c.train.log_every = 10
  c.train.ckpt_every = 50
  c.train.grid_per_class = 4
  c.eval.at_end = False            # evaluate with experiments/bench_adadiff.py
  return c
