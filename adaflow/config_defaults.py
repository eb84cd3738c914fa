"""Every config field with its default, declared once; `configs/*.py` start from `base_config()`
and override.

Any field can be overridden on the command line: `--config.train.steps=100`. A field whose
default is "unset" is an ml_collections placeholder (a typed None), because absl's config flags
refuse to override a plain None: `--config.data.data_dir=/my/images` works. Method sections
(`routing`, `compose`, `selector`, `dqvae`, `dq_transformer`, `grouped`) are always present;
whether a method runs is decided by `objective` (and `grouped.enabled` for train-then-prune).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

# The step counts the AdaDiff policy chooses from (arXiv 2311.14768 uses a few powers of two).
DEFAULT_STEP_SET = (4, 8, 16, 32, 64)
# DiffCR kept-token ratios, one compiled program per bin (arXiv 2412.16822).
DEFAULT_ROUTING_BINS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "run"
  c.seed = 0
  c.objective = "flow_matching"

  c.data = ml_collections.ConfigDict(dict(
      name="digits",          # digits | crops | tfds:<name> | folder
      image_size=16,
      channels=config_dict.placeholder(int),  # unset: the dataset's natural channels (digits 1, crops 3, tfds as stored)
      random_flip=False,
      data_dir=config_dict.placeholder(str),  # TFDS data_dir, or the image folder root for `folder`
      split="train",
      num_crops=8192,         # examples per epoch of the `crops` dataset
      resize=False,           # resize images of another size instead of rejecting them
      crop="",                # folder: "" | "center" (ADM: resize the short side, center-crop; any size)
      resample="bicubic",     # folder: PIL filter of resizes (nearest | box | bilinear | bicubic | lanczos)
      image_key="image",
      label_key="label",      # tfds: the class-label feature; None = no labels (unconditional)
      # True: class-conditional when the data has labels of >= 2 classes, unconditional otherwise (a flat
      # folder, one class, tfds without a label feature); False: ignore the labels (unconditional).
      use_labels=True,
      prefetch=2,             # batches built ahead on host threads during device steps; 0 = synchronous
  ))

  c.model = ml_collections.ConfigDict(dict(
      name="dit",
      size="",                # "", or S | B | L | XL (then depth/hidden_size/num_heads are ignored)
      patch_size=4,
      hidden_size=192,
      depth=6,
      num_heads=3,
      mlp_ratio=4.0,
      class_dropout=0.1,
      learn_sigma=False,
      time_scale=1000.0,
      time_freq_shift=0.0,
      # Matmul inputs; params and accumulation are float32. "auto": bfloat16 where the backend has
      # native bf16 matmuls (TPU, GPU, AVX512_BF16/AMX CPUs), float32 elsewhere (adaflow/parallel/precision.py).
      dtype="auto",
      # Recompute in the backward: "none" | "full" | "save_dots" | "dots_no_batch" (adaflow/parallel/remat.py).
      # "dots_no_batch" keeps the linear layers' outputs and recomputes elementwise work and the attention
      # matrix: with scan_blocks, DiT-S/2 batch 32 plans 2.5 GiB instead of 7.1 GiB at ~the same step time
      # (experiments/results/train_memory.md).
      remat="dots_no_batch",
      # The attention core: "auto" (jax.nn.dot_product_attention on GPUs, for cuDNN's fused kernel; the einsum
      # path elsewhere, faster on XLA:CPU: experiments/results/attention.md) | "dot_product_attention" | "einsum".
      attention="auto",
      scan_blocks=True,       # identical blocks as one lax.scan body (HLO size independent of depth)
      stage_groups=((1, 1),),
      # PPFlow patch schedule ((t_end, (ph, pw)), ...), noise first; only objective 'ppflow' uses it.
      stages=config_dict.placeholder(tuple),
      # A pruned sub-model: per block (heads, mlp_dim); () = the full model. Set by the grouped driver.
      blocks=(),
  ))

  c.flow = ml_collections.ConfigDict(dict(
      interpolant="linear",   # linear (rectified flow / SiT) | cosine (VP)
      prediction="velocity",  # velocity | noise | data
      endpoint_margin=0.02,   # noise/data prediction: the network is evaluated at t >= this / t <= 1 - this (singular end)
      t_sampler="logit_normal",
      logit_mean=0.0,
      logit_std=1.0,
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=1000,
      batch_size=128,         # global batch over all processes
      lr=1e-3,
      schedule="constant",    # constant | cosine (after linear warm-up)
      final_lr_fraction=0.0,
      warmup_steps=100,
      weight_decay=0.0,
      b1=0.9,
      b2=0.99,
      eps=1e-8,
      grad_clip=1.0,
      ema_decay=0.999,
      log_every=50,
      ckpt_every=500,
      keep_checkpoints=3,
      sample_every=0,
      grid_per_class=8,
      final_samples=True,
      nan_policy="stop",      # NaN/Inf loss: "stop" (raise, keep the last good checkpoint) | "skip" the update
      debug_nan_step=-1,      # >= 0: inject a NaN loss at this step (tests the nan_policy path)
      # Multi-process: steps between all-gathers of the stop-signal flag (one host sync each); 10 pays
      # 1/10 of the sync per step, a SIGTERM stops <= 9 steps later (experiments/results/preemption_sync.md).
      preemption_sync_every=10,
      # Milestones: also keep every checkpoint whose step is a multiple of this (beside the
      # keep_checkpoints most recent), e.g. for FID-vs-steps curves; 0 = off; a multiple of ckpt_every.
      keep_every=0,
      # Diagnostics (adaflow/train/diagnostics.py):
      compilation_cache_dir="",  # JAX persistent compilation cache dir ("" = off): restarts skip recompiling
      compilation_cache_min_compile_secs=1.0,  # only cache programs that took longer to compile
      profile_start=1,        # jax.profiler trace starts this many steps after the run's first step
      profile_steps=0,        # trace this many steps into <workdir>/profile (process 0); 0 = off
      peak_tflops_per_device=0.0,  # bf16 peak for mfu; 0 = from device_kind (TPU/GPU table; none on CPU)
      # Optional metric writers beside metrics.jsonl + TensorBoard (adaflow/train/metrics_log.py):
      # "" or comma-separated "wandb,clu"; only used when selected, an uninstalled one is an error.
      writers="",
      wandb_project="adaflow",  # the wandb project of train.writers="wandb"
  ))

  c.sample = ml_collections.ConfigDict(dict(
      method="heun",          # euler | heun | ab2 (2nd-order multistep, 1 call/step) | sde (Euler-Maruyama)
      diffusion_form="sigma", # sde: w(t) = constant | sigma | linear | decreasing | increasing-decreasing (SiT)
      diffusion_norm=1.0,     # sde: scale of w(t); 0 = the ODE
      steps=16,
      cfg_scale=2.0,          # 1.0 = no guidance
      cfg_scales=config_dict.placeholder(tuple),  # PPFlow: one scale per stage (coarse first); unset = cfg_scale
      # How the time grid meets the edges of PPFlow stages / timestep groups / routing regions
      # (adaflow/flow/partition.py): "snap" (the requested steps; grid points moved onto the edges),
      # "insert" (every edge added as a grid point: extra steps), "cross" (uniform grid, steps cross edges).
      edges="snap",
      # ab2 where the network changes (PPFlow stage, timestep group): "keep" its velocity history
      # or "restart" with an Euler step. Routing regions always keep it (same weights).
      multistep_history="keep",
  ))

  c.eval = ml_collections.ConfigDict(dict(
      at_end=False,
      num_samples=1000,
      batch_size=250,
      seed=1234,
      classifier_seed=0,
      # Adam steps of the built-in feature network (adaflow.eval.classifier): FD / class accuracy, and the
      # step policy's classifier reward and DQ-VAE's perceptual loss (their own seeds); part of its cache key.
      classifier_steps=300,
      cache_dir="",
      # Inception FID (+ sFID) while training (adaflow/train/periodic_fid.py); inputs as `adaflow eval fid`:
      fid_every=0,            # steps between FIDs of the EMA params; 0 = off; rows of kind "fid" in metrics.jsonl
      fid_num=5000,           # generated images per FID
      fid_ref="",             # reference .npz (mu/sigma[/mu_s/sigma_s], activations or arr_0) or "dataset[:split]"
      fid_ref_num=50000,      # images for fid_ref="dataset"
      fid_inception="",       # Inception weights file; "" = ~/.cache/adaflow/pt_inception-2015-12-05-6726825d.pth
      fid_random_inception=-1,  # >= 0: random Inception weights with this seed (smoke tests only)
      fid_resize="tf",        # tf (ADM evaluator) | pytorch (pytorch-fid)
      fid_input_size=299,     # Inception input size (299 for real FIDs)
      fid_batch=200,          # images per Inception forward
      fid_gen_batch=256,      # images per generation batch
      fid_shard=1000,         # images per resumable sample shard
  ))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))

  # DQ-Transformer: the trained DQ-VAE workdir whose tokenizer is frozen (`--tokenizer` sets it), and
  # its checkpoint step; -1 = the latest when training starts, then pinned (stored with the run).
  c.tokenizer_workdir = ""
  c.tokenizer_step = -1
  c.routing = routing_defaults()
  c.compose = compose_defaults()
  c.selector = selector_defaults()
  c.dqvae = dqvae_defaults()
  c.dq_transformer = dq_transformer_defaults()
  c.grouped = grouped_defaults()
  return c


def routing_defaults() -> ml_collections.ConfigDict:
  """`config.routing`: DiffCR token routing (objective 'routed_flow_matching', compose.routing)."""
  return ml_collections.ConfigDict(dict(
      bins=DEFAULT_ROUTING_BINS,  # kept-token ratios with static k = ceil(bin * N); must contain 1.0
      num_regions=4,            # timestep regions (paper: 4 for text-to-image, 10 for inpainting)
      boundaries=(),            # () = num_regions even ranges of [0, 1]; else R + 1 edges 0 .. 1
      target=0.75,              # mean kept ratio the ratio loss pulls toward
      ratio_loss_weight=0.3,    # lambda_r (the paper's text: 0.3)
      init_ratio=1.0,           # initial rho (1.0 = no compression)
      rho_min=0.1,              # rho is clamped to [rho_min, rho_max]
      rho_max=1.0,
      scale="ste",              # ste | weight (see adaflow.models.routing.routed_dit)
      fixed_ratio=0.0,          # > 0: non-learned uniform ratio for every layer/region (baseline)
      ratio_lr_scale=1.0,       # rho = ratio_lr_scale * param: with Adam, rho moves ~scale x faster
  ))


def compose_defaults() -> ml_collections.ConfigDict:
  """`config.compose`: which methods a composed generator uses (objective 'composed')."""
  return ml_collections.ConfigDict(dict(
      ppflow=False,
      stages=(),              # PPFlow schedule ((t_end, (ph, pw)), ...), noise first, used when ppflow
      routing=False,
      grouped=False,
      group_blocks=(),        # per group: ((heads, mlp_dim), ...) of its pruned blocks (set by the recipe)
      group_edges=(),         # N + 1 group boundaries in t (set by the recipe)
      selector=False,
      # recipe budgets (steps of train.batch_size images; adaflow.pipelines.recipe)
      dense_steps=600,
      ppflow_steps=200,
      routing_steps=200,
      grouped_steps=200,      # all groups trained together (one batch split over the groups)
      selector_steps=100,
      selector_batch=32,
      finetune_lr=3e-4,
      finetune_warmup_steps=20,
  ))


def selector_defaults() -> ml_collections.ConfigDict:
  """`config.selector`: the AdaDiff step policy (objective 'step_selector', compose.selector)."""
  return ml_collections.ConfigDict(dict(
      generator_workdir="",    # frozen flow-matching generator; `--init <workdir>` sets it
      generator_step=-1,       # its checkpoint step; -1 = the latest when training starts, then pinned
      step_set=DEFAULT_STEP_SET,
      # (solver, steps) actions as "solver:steps" strings, e.g. ("euler:4", "ab2:8", "heun:8"); () =
      # step_set with selector.method (adaflow/models/step_selector.py parse_actions)
      actions=(),
      # the reward's compute term: R = quality - beta * cost / max cost over the actions; "steps"
      # (the AdaDiff paper), "nfe" (network evaluations: Heun counts 2 per step) or "flops"
      # (the generator's analytic sampling FLOPs: a PPFlow stage or pruned group costs less per call)
      cost="steps",
      quality="classifier",    # closeness | classifier | features  (adaflow.rl.rewards)
      beta=0.5,                # R = quality - beta * steps / max_steps
      entropy_coef=0.01,
      baseline_decay=0.9,
      hidden=64,
      depth=2,
      use_noise_stats=False,   # add initial-noise statistics to the policy input
      method="",               # ODE method; "" = the generator's sample.method
      cfg_scale=-1.0,          # CFG scale; < 0 = the generator's sample.cfg_scale
      # The reward's classifier ('classifier' / 'features' qualities): a network trained with another
      # seed than the evaluation's (eval.classifier_seed), so a policy is never scored by its reward.
      classifier_seed=1,
      lr=3e-3,                 # the compose recipe's policy learning rate
  ))


def dqvae_defaults() -> ml_collections.ConfigDict:
  """`config.dqvae`: the DQ-VAE tokenizer (objective 'dqvae'; arXiv 2305.11842)."""
  return ml_collections.ConfigDict(dict(
      router="gumbel",          # gumbel | entropy | fixed (fixed = the fixed-grid VQ baseline)
      fine_fraction=0.5,        # target r (gumbel: budget target; entropy: percentile; fixed: exact)
      budget_weight=10.0,       # gamma
      gumbel_tau=1.0,
      gate_gradient="max",      # max: the paper's straight-through (selected map x gate max); both: mix
      gate_calibration=True,    # encode with the EMA (1 - r) quantile of the gate margin as threshold
      gate_calibration_decay=0.9,
      entropy_bins=16,
      entropy_num_images=1024,  # training images used to set the entropy threshold
      coarse_stride=8,          # F: coarse regions F x F, fine cells F/2 x F/2
      width=64,
      num_res_blocks=1,
      embed_dim=32,
      codebook_size=256,
      ema_decay=0.99,
      commitment=0.25,
      restart_threshold=0.05,   # EMA cluster size below which a code is restarted
      l1_weight=1.0,
      l2_weight=1.0,
      perceptual_weight=0.0,    # > 0 uses the features of an adaflow.eval classifier ...
      perceptual_seed=1,        # ... trained with this seed, not eval.classifier_seed (FD's network)
      disc_weight=0.0,          # > 0 adds a PatchGAN critic (hinge loss)
      disc_width=32,
      recon_bank_per_class=64,  # real examples per class behind generate() (reconstructions)
  ))


def dq_transformer_defaults() -> ml_collections.ConfigDict:
  """`config.dq_transformer`: the stage-2 transformer over DQ-VAE codes (objective 'dq_transformer')."""
  return ml_collections.ConfigDict(dict(
      width=128,
      depth_pos=2,
      depth_content=2,
      num_heads=4,
      mlp_ratio=4.0,
      # Matmul inputs ("auto" as model.dtype: bfloat16 where matmuls are native bf16, else float32);
      # params and accumulation float32.
      dtype="auto",
      position_weight=0.5,    # the 1/2 in CE(content) + 1/2 (CE coarse pos + CE fine pos)
      top_k=0,                # 0 = no top-k filtering
      temperature=1.0,
  ))


def grouped_defaults() -> ml_collections.ConfigDict:
  """`config.grouped`: timestep-grouped train-then-prune (arXiv 2312.13307)."""
  return ml_collections.ConfigDict(dict(
      # True: `adaflow train` runs the three-stage pipeline (adaflow.pipelines.grouped) instead of
      # one training run; the compose recipe reads the other fields without it.
      enabled=False,
      num_groups=4,            # N timestep groups (contiguous, equal width in SNR dB)
      k=0.5,                   # smallest budget fraction: budget(i) = (i/N + (N-i)/N k) F
      largest="data",          # which end of t gets the full-size model: data (t ~ 1) | noise (t ~ 0)
      snr_range_db=(-20.0, 20.0),
      stage1_steps=1500,       # dense base steps (batch train.batch_size)
      stage2_steps=250,        # fine-tune steps PER GROUP (0 = pruning only)
      stage2_lr=3e-4,
      stage2_warmup_steps=20,
      importance="taylor",     # taylor | magnitude
      importance_batches=4,
      proposer="importance",   # importance | random
      rounds=4,
      proposals_per_round=4,
      proxy_samples=256,       # held-out examples per proxy evaluation
      proxy_finetune_steps=0,  # optional Adam steps before the proxy loss
      proxy_lr=1e-4,
      mlp_granularity=32,      # MLP channels move in chunks of this size
      allow_block_drop=True,
      search_seed=0,
      eval_stage1=False,       # FD of the dense base after stage 1
      # Stage 2 of one group (set by the driver, objective 'grouped_finetune'):
      group=config_dict.placeholder(int),      # the group's index
      t_range=config_dict.placeholder(tuple),  # (lo, hi): the group's time range
  ))


def _unknown(path: str, known) -> ValueError:
  return ValueError(f"config.{path}: unknown field; known fields here are {sorted(known)} "
                    "(adaflow.config_defaults.base_config declares every field)")


def check_known_fields(config) -> None:
  """Raises one ValueError naming the first field of `config` that `base_config()` does not declare."""
  _merge(base_config(), config, "", assign=False)


def merged_config(given: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """`given` (a config saved by an older or newer run, e.g. a checkpoint's `config` as a dict)
  written over `base_config()`: fields added since it was saved take their defaults; a field the
  schema does not declare is one ValueError naming it."""
  c = base_config()
  _merge(c, given, "")
  return c


def _tuples(value):
  """JSON stores tuples as lists; the schema has tuple fields only (hashable, as the models need)."""
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


# Fields whose type changed: a value saved by an older run -> today's spelling of the same setting.
_LEGACY_VALUES = {
    "model.remat": lambda v: ("full" if v else "none") if isinstance(v, bool) else v,   # was True / False
}


def _merge(into: ml_collections.ConfigDict, given, prefix: str, assign: bool = True) -> None:
  """Writes `given` over `into` field by field; `assign=False` only checks that `into` declares
  every field of `given` (and a section where `into` has one), without writing or type checks."""
  for k in given.keys():
    path = f"{prefix}{k}"
    if k not in into:
      raise _unknown(path, into.keys())
    value = _LEGACY_VALUES.get(path, lambda v: v)(given[k])
    if isinstance(into[k], ml_collections.ConfigDict):
      if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
        raise ValueError(f"config.{path}: is a section of fields, got {value!r}")
      _merge(into[k], value, path + ".", assign)
    elif assign:
      try:
        into[k] = _tuples(value)
      except TypeError:
        raise ValueError(f"config.{path}: has type {type(value).__name__}, expected the type of its "
                         f"default {into[k]!r}") from None


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config([arg])` of the config file at `path` (config files are not a package; one
  config builds on another by loading it with this). Relative paths resolve against the caller's
  file when given as `os.path.join(os.path.dirname(__file__), "quickstart.py")`."""
  if not os.path.exists(path):
    raise ValueError(f"config file {path!r} does not exist")
  name = "_adaflow_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)
