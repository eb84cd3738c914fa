"""The one multi-stage runner: resumable stages, each in its own directory with a DONE marker.

A multi-run job (train-then-prune, the compose recipe, the frontier benchmark) is a sequence of
stages, each writing into `<workdir>/<name>`. `run_stage` runs a stage unless its directory already
holds a DONE marker, and writes the marker only after the stage returned, so a rerun of the same
command skips finished stages and resumes an interrupted one (the trainer itself resumes from the
stage's latest checkpoint).

A stage that trains calls `train_stage`: when a signal (SIGTERM on preemption, Ctrl-C) stops its
training before the last step, the checkpoint is saved and `StageStopped` ends the job there, so the
stage is not marked DONE and no later stage starts from a half-trained one (the CLI exits 0, as
`adaflow train` does on a stop; rerunning the command resumes the stage).

Several processes: every process runs every stage (training is collective); process 0 decides
whether a stage is done (`agree`) and alone writes the marker, and all wait until it is written.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax

from adaflow import storage
from adaflow.parallel.host import agree, barrier, is_writer
from adaflow.train.loop import train

MARKER = "DONE"


class StageStopped(Exception):
  """A stage's training stopped on a signal before its last step (checkpoint saved): the job ends."""


def train_stage(config, stage_dir: str, **train_kwargs):
  """`adaflow.train.loop.train` for one stage of a multi-run job; raises `StageStopped` when the run
  returned on a stop request (every process stops at the same step) instead of completing: its
  train_complete.json, which `train` writes only then, is missing (process 0's answer)."""
  state = train(config, stage_dir, **train_kwargs)
  if not agree(storage.exists(os.path.join(stage_dir, "train_complete.json"))):
    raise StageStopped(f"stage {stage_dir} stopped at step {int(jax.device_get(state.step))} of "
                       f"{config.train.steps} (checkpoint saved), not marked done; run the same command again to resume")
  return state


def stage_done(path: str) -> bool:
  """True once the stage directory `path` has its DONE marker (the same answer on every process)."""
  return agree(storage.exists(os.path.join(path, MARKER)))


def mark_stage_done(path: str, info: dict) -> None:
  """Writes `path/DONE` with `info` (JSON) from process 0; every process returns after it exists."""
  if is_writer():
    storage.makedirs(path)
    storage.write_json(os.path.join(path, MARKER), info)
  barrier(f"stage done {path}")


def stage_config(config, name: str, steps: int, *, lr: Optional[float] = None,
                 warmup_steps: Optional[int] = None):
  """`config` for training stage `name` of a multi-run job: `steps` steps (`lr` / `warmup_steps` when
  given), at least one checkpoint and log row, no sample grids or evaluation (the job evaluates)."""
  c = config.copy_and_resolve_references()
  c.name = f"{config.name}_{name}"
  c.train.steps = int(steps)
  if lr is not None:
    c.train.lr = float(lr)
  if warmup_steps is not None:
    c.train.warmup_steps = int(warmup_steps)
  c.train.ckpt_every = max(1, min(int(c.train.ckpt_every), int(steps) or 1))
  c.train.log_every = max(1, min(int(c.train.log_every), int(steps) or 1))
  c.train.final_samples = False
  c.train.sample_every = 0
  c.eval.at_end = False
  return c


def run_stage(workdir: str, name: str, fn: Callable[[str], Any], info: Optional[dict] = None,
              log: Callable[[str], Any] = print) -> str:
  """Runs `fn(stage_dir)` for stage `name` unless `<workdir>/<name>` is already DONE; marks it
  DONE with `info` afterwards. Returns the stage directory."""
  d = os.path.join(workdir, name)
  if stage_done(d):
    log(f"{name}: already finished ({d}/{MARKER}); skipping")
    return d
  fn(d)
  mark_stage_done(d, dict(info or {}))
  return d
