"""ImageNet 64x64 (class-conditional, pixel space) recipes: `--config experiments/imagenet64/config.py:<method>`.

Methods: dense | ppflow2 | ppflow3 | diffcr | grouped | adadiff | smoke.

All share the dense baseline: DiT-B/4 on `tfds:imagenet_resized/64x64` (1.28M labelled images,
64x64x3 -> 16x16 = 256 tokens with patch 4, the patch size pixel-space transformers use at 64x64),
global batch 1024, AdamW-style Adam lr 1e-4 (constant after 5k warm-up), EMA 0.9999, label dropout
0.1, bf16 matmuls with fp32 params, 400k steps (~320 epochs). Sampling for FID: Heun, 125 steps
(250 NFE, close to the 250-step protocol of iDDPM/ADM), CFG scale 1.0 (no guidance; the anchors in
README are unguided). Per-method fields follow SPEC.md and each method's own module:

* ppflow2 / ppflow3: `objective='ppflow'`, stages (t <= 0.5: 8x8 patches = 64 tokens;
  ppflow3 adds (0.5, 0.75]: 4 rows x 8 columns = 128 tokens), base patch 4 (256 tokens).
* diffcr: `objective='routed_flow_matching'`, `config.routing` (4 regions, target 0.75 kept).
* grouped: train-then-prune (N = 5 groups, k = 0.5: mean 0.8 F, as the paper's ~20% saving);
  stage 1 = the dense recipe's first 320k steps, then pruning, then 5 x 16k fine-tuning steps.
* adadiff: a step-count policy on top of a trained dense generator (`--init <dense workdir>`).
* smoke: the same data path and model code at toy size, for the CPU smoke run (`smoke.py`).

The dataset must be prepared once in ArrayRecord format (see README.md); `data_dir` is a
command-line override: `--config.data.data_dir=gs://bucket/tfds`.
"""
import ml_collections

from adaflow.config_defaults import base_config

METHODS = ("dense", "ppflow2", "ppflow3", "diffcr", "grouped", "adadiff", "smoke")


def dense() -> ml_collections.ConfigDict:
  c = base_config()
  c.name = "imagenet64_dense_B4"
  c.data.name = "tfds:imagenet_resized/64x64"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.random_flip = True
  c.model.size = "B"
  c.model.patch_size = 4
  c.model.class_dropout = 0.1
  c.model.dtype = "bfloat16"
  c.train.steps = 400_000
  c.train.batch_size = 1024
  c.train.lr = 1e-4
  c.train.warmup_steps = 5000
  c.train.schedule = "constant"
  c.train.weight_decay = 0.0
  c.train.ema_decay = 0.9999
  c.train.log_every = 100
  c.train.ckpt_every = 10_000
  c.train.sample_every = 50_000
  c.sample.method = "heun"
  c.sample.steps = 125
  c.sample.cfg_scale = 1.0
  c.eval.num_samples = 10_000     # in-training FD check; FID-50K is `adaflow eval fid`
  c.eval.batch_size = 1024
  c.mesh.data = -1                # all devices on the data axis (DiT-B fits per chip)
  return c


def _ppflow(c, three: bool):
  c.name = "imagenet64_ppflow3_B4" if three else "imagenet64_ppflow2_B4"
  c.objective = "ppflow"
  c.model.stages = (((0.5, (8, 8)), (0.75, (4, 8)), (1.0, (4, 4))) if three
                    else ((0.5, (8, 8)), (1.0, (4, 4))))
  c.sample.cfg_scales = (1.0, 1.0, 1.0) if three else (1.0, 1.0)
  return c


def _diffcr(c):
  from adaflow.models.routing import routing_defaults  # pylint: disable=g-import-not-at-top
  c.name = "imagenet64_diffcr_B4"
  c.objective = "routed_flow_matching"
  c.routing = routing_defaults()
  c.routing.num_regions = 4
  c.routing.target = 0.75
  c.routing.ratio_loss_weight = 0.3
  return c


def _grouped(c):
  from adaflow.prune.pipeline import grouped_defaults  # pylint: disable=g-import-not-at-top
  c.name = "imagenet64_grouped_B4"
  c.grouped = grouped_defaults()
  c.grouped.num_groups = 5
  c.grouped.k = 0.5
  c.grouped.largest = "data"
  c.grouped.stage1_steps = 320_000
  c.grouped.stage2_steps = 16_000
  c.grouped.stage2_lr = 5e-5
  c.grouped.stage2_warmup_steps = 500
  return c


def _adadiff(c):
  from adaflow.objectives.step_selector import selector_defaults  # pylint: disable=g-import-not-at-top
  c.name = "imagenet64_adadiff_B4"
  c.objective = "step_selector"
  c.selector = selector_defaults()
  c.selector.step_set = (8, 16, 32, 64, 125)
  c.selector.quality = "closeness"   # agreement with the max-step sample (no extra model)
  c.train.steps = 2000
  c.train.batch_size = 256
  c.train.lr = 1e-3
  c.train.warmup_steps = 50
  c.train.ema_decay = 0.0
  c.train.ckpt_every = 500
  return c


def smoke() -> ml_collections.ConfigDict:
  """The dense recipe's data path and model code at toy size (CPU, seconds)."""
  c = dense()
  c.name = "imagenet64_smoke"
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
  c.eval.num_samples = 8
  c.eval.batch_size = 8
  return c


def get_config(method: str = "dense") -> ml_collections.ConfigDict:
  if method not in METHODS:
    raise ValueError(f"experiments/imagenet64/config.py:<method> needs one of {METHODS}; got {method!r}.")
  if method == "smoke":
    return smoke()
  c = dense()
  if method in ("ppflow2", "ppflow3"):
    return _ppflow(c, method == "ppflow3")
  if method == "diffcr":
    return _diffcr(c)
  if method == "grouped":
    return _grouped(c)
  if method == "adadiff":
    return _adadiff(c)
  return c
