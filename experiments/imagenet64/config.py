"""ImageNet 64x64 (pixel space) recipes: `--config experiments/imagenet64/config.py:<method>`.

Methods: dense | ppflow2 | ppflow3 | diffcr | grouped | adadiff | smoke (class-conditional) and
uncond | uncond_smoke (unconditional).

`dense`, `ppflow2`, `ppflow3` and `grouped` ARE the method owners' `configs/imagenet64_<method>.py`
(loaded by path, so there is one source of truth); `diffcr` and `adadiff` are built here on top of
`configs/imagenet64_dense.py`; `smoke` shrinks the dense recipe's model for the CPU smoke run.

Dense baseline (configs/imagenet64_dense.py): DiT-B/4 on `tfds:imagenet_resized/64x64` (64x64x3 ->
16x16 = 256 tokens), global batch 1024, lr 1e-4, EMA 0.9999, label dropout 0.1, bf16 matmuls with
fp32 params, 400k steps; sampling Heun 125 steps (250 NFE). Per-method fields follow the papers:

* ppflow2 / ppflow3: `objective='ppflow'`, coarse 8x8 patches for t <= 0.5 (and 4x8 for
  (0.5, 0.75] with 3 levels), base patch 4.
* diffcr: `objective='routed_flow_matching'`, `config.routing` (4 regions, target 0.75 kept,
  ratio-loss weight 0.3).
* grouped: train-then-prune, N = 5 SNR groups, k = 0.5 (see configs/imagenet64_grouped.py).
* adadiff: a step-count policy on a trained dense generator (`--init <dense workdir>`).
* uncond: the dense recipe without labels on `tfds:downsampled_imagenet/64x64` (van den Oord et al.
  2016's downsampled ImageNet, the unconditional benchmark; no label feature: `data.label_key=None`),
  no guidance (CFG 1). Any other method runs unconditionally the same way (README.md).

The dataset must be prepared once in ArrayRecord format (see README.md); `data_dir` is a
command-line override: `--config.data.data_dir=gs://bucket/tfds`.
"""
import os

import ml_collections

METHODS = ("dense", "ppflow2", "ppflow3", "diffcr", "grouped", "adadiff", "smoke", "uncond", "uncond_smoke")
CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")


def _load(name: str) -> ml_collections.ConfigDict:
  """A configs/*.py file's get_config() (see adaflow.config_defaults.load_config_file)."""
  from adaflow.config_defaults import load_config_file
  return load_config_file(os.path.normpath(os.path.join(CONFIGS, f"{name}.py")))


def dense() -> ml_collections.ConfigDict:
  return _load("imagenet64_dense")


def _diffcr(c):
  c.name = "imagenet64_diffcr_B4"
  c.objective = "routed_flow_matching"
  c.routing.num_regions = 4
  c.routing.target = 0.75
  c.routing.ratio_loss_weight = 0.3
  return c


def _adadiff(c):
  c.name = "imagenet64_adadiff_B4"
  c.objective = "step_selector"
  c.selector.step_set = (8, 16, 32, 64, 125)
  c.selector.quality = "closeness"   # agreement with the max-step sample (no extra model)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.train.lr = 1e-3
  c.train.warmup_steps = 50
  c.train.ema_decay = 0.0
  c.train.ckpt_every = 500
  return c


def uncond() -> ml_collections.ConfigDict:
  """Unconditional: the dense recipe on the unlabeled downsampled ImageNet 64x64, no guidance."""
  c = dense()
  c.name = "imagenet64_uncond_B4"
  c.data.name = "tfds:downsampled_imagenet/64x64"
  c.data.label_key = None          # the dataset has no labels: an unconditional model (one null row)
  c.model.class_dropout = 0.0      # every label is the null label already
  c.sample.cfg_scale = 1.0         # no guidance without labels (validation refuses anything else)
  c.train.grid_per_class = 64      # one class: a 64-image sample grid
  return c


def smoke(c=None, name: str = "imagenet64_smoke") -> ml_collections.ConfigDict:
  """The dense (or given) recipe's data path and model code at toy size (CPU, seconds)."""
  c = dense() if c is None else c
  c.name = name
  c.model.size = ""
  c.model.patch_size = 8
  c.model.hidden_size = 32
  c.model.depth = 1
  c.model.num_heads = 2
  c.model.dtype = "float32"
  c.train.steps = 2
  c.train.batch_size = 8
  c.train.lr = 1e-3
  c.train.warmup_steps = 1
  c.train.log_every = 1
  c.train.ckpt_every = 2
  c.train.sample_every = 0
  c.train.final_samples = False
  c.train.ema_decay = 0.5
  c.sample.method = "euler"
  c.sample.steps = 2
  c.sample.cfg_scale = 1.0
  c.eval.num_samples = 8
  c.eval.batch_size = 8
  return c


def get_config(method: str = "dense") -> ml_collections.ConfigDict:
  if method not in METHODS:
    raise ValueError(f"experiments/imagenet64/config.py:<method> needs one of {METHODS}; got {method!r}.")
  if method == "smoke":
    return smoke()
  if method in ("uncond", "uncond_smoke"):
    c = uncond()
    if method == "uncond_smoke":
      c = smoke(c, "imagenet64_uncond_smoke")
      c.data.resize = True         # TFDS mock images of this dataset have random sizes (no static shape)
      c.train.grid_per_class = 8
    return c
  c = dense()
  if method in ("ppflow2", "ppflow3", "grouped"):
    return _load(f"imagenet64_{method}")
  if method == "diffcr":
    return _diffcr(c)
  if method == "adadiff":
    return _adadiff(c)
  return c
