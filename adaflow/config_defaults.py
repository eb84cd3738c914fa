"""Every config field with its default; `configs/*.py` start from `base_config()` and override.

Any field can be overridden on the command line: `--config.train.steps=100`.
"""
from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "run"
  c.seed = 0
  c.objective = "flow_matching"

  c.data = ml_collections.ConfigDict(dict(
      name="digits",          # digits | crops | tfds:<name> | folder
      image_size=16,
      channels=None,          # None: the dataset's natural channels (digits 1, crops 3, tfds as stored)
      random_flip=False,
      data_dir=None,          # TFDS data_dir, or the image folder root for `folder`
      split="train",
      num_crops=8192,         # examples per epoch of the `crops` dataset
      resize=False,           # resize images of another size instead of rejecting them
      image_key="image",
      label_key="label",
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
      scan_blocks=True,       # identical blocks as one lax.scan body (HLO size independent of depth)
      stage_groups=((1, 1),),
  ))

  c.flow = ml_collections.ConfigDict(dict(
      interpolant="linear",   # linear (rectified flow / SiT) | cosine (VP)
      prediction="velocity",  # velocity | noise | data
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
  ))

  c.sample = ml_collections.ConfigDict(dict(
      method="heun",          # euler | heun
      steps=16,
      cfg_scale=2.0,          # 1.0 = no guidance
  ))

  c.eval = ml_collections.ConfigDict(dict(
      at_end=False,
      num_samples=1000,
      batch_size=250,
      seed=1234,
      classifier_seed=0,
      cache_dir="",
  ))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))
  return c


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config([arg])` of the config file at `path` (config files are not a package; one
  config builds on another by loading it with this). Relative paths resolve against the caller's
  file when given as `os.path.join(os.path.dirname(__file__), "quickstart.py")`."""
  import importlib.util
  import os
  if not os.path.exists(path):
    raise ValueError(f"config file {path!r} does not exist")
  name = "_adaflow_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)
