"""Config validation: every setting that cannot work fails here, before anything is compiled.

Each error is a `ValueError` whose message names the config field and says how to fix it.
The checks of one objective are its `validate(config, info)`, passed in by whoever builds it
(`adaflow.methods.validate` passes the method's own): nothing is registered on import.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import jax

from adaflow.config_defaults import check_known_fields
from adaflow.flow.interpolants import INTERPOLANTS, PREDICTIONS
from adaflow.flow.partition import EDGE_RULES
from adaflow.flow.samplers import DIFFUSION_FORMS, METHODS, MULTISTEP_HISTORY
from adaflow.flow.timesteps import T_SAMPLERS
from adaflow.parallel.mesh import mesh_shape
from adaflow.parallel.remat import FULL_NAMES, OFF_NAMES, REMAT_POLICIES

def require(cond: bool, field: str, message: str) -> None:
  if not cond:
    raise ValueError(f"config.{field}: {message}")


def validate_train(config) -> None:
  t = config.train
  require(isinstance(t.steps, int) and t.steps >= 0, "train.steps", f"must be an integer >= 0, got {t.steps!r}")
  require(t.batch_size > 0, "train.batch_size", f"must be positive, got {t.batch_size}")
  require(t.lr > 0, "train.lr", f"must be positive, got {t.lr}")
  require(t.warmup_steps >= 0, "train.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
  require(0.0 <= t.ema_decay < 1.0, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
  for field in ("log_every", "ckpt_every"):
    require(t[field] > 0, f"train.{field}", f"must be positive, got {t[field]}")
  require(t.sample_every >= 0, "train.sample_every", "must be >= 0 (0 = only at the end)")
  require(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
  require(t.nan_policy in ("stop", "skip"), "train.nan_policy",
           f"must be 'stop' or 'skip', got {t.nan_policy!r}")
  require(isinstance(t.debug_nan_step, int), "train.debug_nan_step",
           f"must be an integer (-1 = off), got {t.debug_nan_step!r}")
  require(t.preemption_sync_every >= 1, "train.preemption_sync_every", "must be >= 1")
  # AdamW and the schedule (adaflow/train/optim.py): out of range they train on silently, or NaN.
  for field in ("b1", "b2"):
    require(0.0 <= t[field] < 1.0, f"train.{field}", f"must be in [0, 1) (an Adam moment decay), got {t[field]}")
  require(t.eps > 0, "train.eps", f"must be positive (Adam's denominator floor), got {t.eps}")
  require(t.weight_decay >= 0, "train.weight_decay", f"must be >= 0 (0 = off), got {t.weight_decay}")
  require(t.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (the global-norm bound; 0 = no clipping), got {t.grad_clip}")
  require(0.0 <= t.final_lr_fraction <= 1.0, "train.final_lr_fraction",
           f"must be in [0, 1] (the learning rate at the last step, as a fraction of train.lr), got {t.final_lr_fraction}")
  require(_is_int(t.grid_per_class) and t.grid_per_class >= 1, "train.grid_per_class",
           f"must be an integer >= 1 (samples per class in the sample grids), got {t.grid_per_class!r}")
  validate_diagnostics(config)


def validate_eval(config) -> None:
  """The final evaluation's sample count and batch (eval.*); checked even with eval.at_end off,
  because `adaflow eval` and the compose recipe read them too."""
  e = config.eval
  require(_is_int(e.num_samples) and e.num_samples >= 2, "eval.num_samples",
           f"must be an integer >= 2 (the FD compares feature statistics of the samples), got {e.num_samples!r}; "
           "to skip the final evaluation set eval.at_end=False")
  require(_is_int(e.batch_size) and e.batch_size > 0, "eval.batch_size",
           f"must be a positive integer, got {e.batch_size!r}")
  require(_is_int(e.classifier_steps) and e.classifier_steps > 0, "eval.classifier_steps",
           f"must be a positive integer (Adam steps of the feature network; 300 by default), got {e.classifier_steps!r}")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def validate_diagnostics(config) -> None:
  """Milestone checkpoints, compilation cache, profiler window and MFU peak (train.*)."""
  t = config.train
  keep_every, ckpt_every = t.keep_every, t.ckpt_every
  require(_is_int(keep_every) and keep_every >= 0, "train.keep_every",
           f"must be an integer >= 0 (0 = no milestone checkpoints), got {keep_every!r}")
  # Milestones are chosen among saved checkpoints: a multiple of keep_every that is never saved
  # (not a multiple of ckpt_every) would silently never be kept.
  require(keep_every == 0 or keep_every % ckpt_every == 0, "train.keep_every",
           f"{keep_every} is not a multiple of train.ckpt_every={ckpt_every}, so those steps are never saved; "
           f"use a multiple of {ckpt_every} (or 0 = off)")
  require(isinstance(t.compilation_cache_dir, str), "train.compilation_cache_dir",
           f"must be a directory path string (\"\" = off), got {t.compilation_cache_dir!r}")
  require(t.compilation_cache_min_compile_secs >= 0, "train.compilation_cache_min_compile_secs",
           f"must be >= 0 seconds, got {t.compilation_cache_min_compile_secs!r}")
  for field in ("profile_start", "profile_steps"):
    v = t[field]
    require(_is_int(v) and v >= 0, f"train.{field}", f"must be an integer >= 0, got {v!r}")
  require(t.peak_tflops_per_device >= 0, "train.peak_tflops_per_device",
           f"must be >= 0 (0 = from the device kind), got {t.peak_tflops_per_device!r}")


def validate_data(config) -> None:
  """Loop-side data fields (the dataset fields themselves are checked by `adaflow.data.get_info`)."""
  p = config.data.prefetch
  require(isinstance(p, int) and not isinstance(p, bool) and p >= 0, "data.prefetch",
           f"must be an integer >= 0 (batches built ahead on host threads; 0 = synchronous), got {p!r}")


def validate_flow(config) -> None:
  f = config.flow
  require(f.interpolant in INTERPOLANTS, "flow.interpolant",
           f"must be one of {sorted(INTERPOLANTS)}, got {f.interpolant!r}")
  require(f.prediction in PREDICTIONS, "flow.prediction",
           f"must be one of {PREDICTIONS}, got {f.prediction!r}")
  require(f.t_sampler in T_SAMPLERS, "flow.t_sampler",
           f"must be one of {T_SAMPLERS}, got {f.t_sampler!r}")
  require(f.logit_std > 0, "flow.logit_std", f"must be positive (the logit-normal t sampler's spread), got {f.logit_std}")
  s = config.sample
  require(int(s.steps) >= 1, "sample.steps", f"must be >= 1, got {s.steps}")
  require(s.method in METHODS, "sample.method", f"must be one of {METHODS}, got {s.method!r}")
  require(s.cfg_scale >= 0, "sample.cfg_scale", f"must be >= 0 (1.0 = no guidance), got {s.cfg_scale}")
  # Checked here, not only when sampling: a bad value would otherwise surface at the first sample
  # grid or evaluation, after training has run.
  require(s.diffusion_form in DIFFUSION_FORMS, "sample.diffusion_form",
           f"must be one of {DIFFUSION_FORMS}, got {s.diffusion_form!r}")
  require(s.edges in EDGE_RULES, "sample.edges", f"must be one of {EDGE_RULES}, got {s.edges!r}")
  require(s.multistep_history in MULTISTEP_HISTORY, "sample.multistep_history",
           f"must be one of {MULTISTEP_HISTORY}, got {s.multistep_history!r}")
  require(float(s.diffusion_norm) >= 0, "sample.diffusion_norm", f"must be >= 0 (0 = the ODE), got {s.diffusion_norm}")
  require(0.0 <= float(f.endpoint_margin) < 0.5, "flow.endpoint_margin",
           f"must be in [0, 0.5) (0 = evaluate the network at the singular end), got {f.endpoint_margin}")


def validate_model(config, info) -> None:
  m = config.model
  h, w, _ = info.image_shape
  p = m.patch_size
  require(p >= 1, "model.patch_size", f"must be >= 1, got {p}")
  for g in m.stage_groups:
    gh, gw = g
    require(h % (p * gh) == 0 and w % (p * gw) == 0, "model.patch_size",
             f"image {h}x{w} (data.image_size) is not divisible by the patch {p * gh}x{p * gw} "
             f"(patch_size {p} x stage grouping {gh}x{gw}); choose a patch size that divides the image")
  if not m.size:
    require(m.hidden_size % m.num_heads == 0, "model.hidden_size",
             f"{m.hidden_size} is not divisible by model.num_heads={m.num_heads}")
    require(m.hidden_size % 4 == 0, "model.hidden_size", "must be divisible by 4 (2D sin-cos positions)")
    require(m.depth >= 1, "model.depth", f"must be >= 1, got {m.depth}")
  require(0.0 <= m.class_dropout < 1.0, "model.class_dropout", "must be in [0, 1)")
  require(m.mlp_ratio > 0, "model.mlp_ratio", f"must be positive (MLP width / hidden_size), got {m.mlp_ratio}")
  require(m.time_scale > 0, "model.time_scale", f"must be positive (t in [0, 1] is embedded as t x time_scale), "
           f"got {m.time_scale}")
  require(isinstance(m.remat, bool) or m.remat in REMAT_POLICIES or m.remat in OFF_NAMES + FULL_NAMES, "model.remat",
           f"must be 'none' or a policy name in {sorted(REMAT_POLICIES)}, got {m.remat!r}")
  require(isinstance(m.scan_blocks, bool), "model.scan_blocks", f"must be True or False, got {m.scan_blocks!r}")
  require(m.dtype in ("auto", "bfloat16", "float32", "float16"), "model.dtype",
           f"must be auto, bfloat16, float32 or float16, got {m.dtype!r}")
  require(m.attention in ("auto", "einsum", "dot_product_attention"), "model.attention",
           f"must be auto, einsum or dot_product_attention, got {m.attention!r}")


def validate_objective_fields(config) -> None:
  """Fields that belong to one objective must not be set for another (they would be ignored)."""
  require(config.model.stages is None or config.objective == "ppflow", "model.stages",
           "only objective 'ppflow' uses a patch schedule; set config.objective='ppflow' or remove model.stages")


def validate_mesh(config, num_devices: int, num_processes: int = 1, training: bool = True) -> None:
  """The mesh fits the devices; when `training`, the global batch fits the mesh and the processes
  (sampling and evaluation batch their own images, so a run trained elsewhere loads on any count)."""
  try:
    data, fsdp, _ = mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ValueError(f"config.mesh: {e}") from None
  if not training:
    return
  b = config.train.batch_size
  require(b % (data * fsdp) == 0, "train.batch_size",
           f"global batch {b} is not divisible by the batch-sharding mesh axes data*fsdp = {data}*{fsdp}; "
           f"use a multiple of {data * fsdp}")
  require(b % num_processes == 0, "train.batch_size",
           f"global batch {b} is not divisible by the number of processes {num_processes}")


def validate(config, info=None, num_devices: Optional[int] = None, num_processes: int = 1,
             checks: Sequence[Callable] = (), training: bool = True) -> None:
  """All checks that need no compilation. `info` is the dataset's DatasetInfo (from
  `adaflow.data.get_info`, which itself validates `config.data`); `checks` are further
  `fn(config, info)`, e.g. the objective's `validate`."""
  check_known_fields(config)
  validate_objective_fields(config)
  validate_train(config)
  validate_eval(config)
  validate_data(config)
  validate_flow(config)
  if info is not None:
    validate_model(config, info)
  if num_devices is not None:
    validate_mesh(config, num_devices, num_processes, training)
  for fn in checks:
    fn(config, info)


def num_params(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
