"""`eval.fid_every`: Inception FID (and sFID when the reference has spatial statistics) of the EMA
parameters every N steps inside `adaflow train`.

The same path as `adaflow eval fid` (`adaflow.eval.fid.run.run_fid`: resumable sample shards under
`<workdir>/fid/<tag>/`, collective on several processes), with the user's Inception weights
(`eval.fid_inception`, default `~/.cache/adaflow/pt_inception-2015-12-05-6726825d.pth`) and
reference (`eval.fid_ref`: an .npz such as ADM's reference batch, or `dataset[:split]`). Results
are rows of kind "fid" in metrics.jsonl (and TensorBoard / the selected writers); a resumed run
keeps the rows up to its checkpoint and computes only the missing ones.
"""
from __future__ import annotations

import os
from typing import Optional

from adaflow.eval.fid.features import InceptionFeatures, features_from_config
from adaflow.eval.fid.reference import reference_exists, resolve_reference
from adaflow.eval.fid.run import run_fid, run_tag
from adaflow.flow.driver import balanced_labels
from adaflow.parallel.host import agree
from adaflow.train.hooks import Hook
from adaflow.train.metrics_log import read_metrics


class PeriodicFID(Hook):
  """A loop hook (hooks.py), built before training compiles: missing weights or reference fail
  then. It runs after the step's checkpoint, so a resumed run finds the step's row or computes it
  (`start`). `__call__(generator, params, step) -> {"fid", "sfid"?, "inception_score"?}`; all of it
  on every process."""

  def __init__(self, config, workdir: str, mesh, log=print):
    ec = config.eval
    self.every = int(ec.fid_every)
    self.config, self.workdir, self.log = config, workdir, log
    self.features: Optional[InceptionFeatures] = None
    self._reference = None
    if self.every < 0:
      raise ValueError(f"eval.fid_every must be >= 0 (0 = off), got {self.every}")
    if not self.every:
      return
    self.num = int(ec.fid_num)
    if self.num < 2:
      raise ValueError(f"eval.fid_num must be >= 2 images (a covariance), got {self.num}")
    self.ref = str(ec.fid_ref)
    if not self.ref:
      raise ValueError("eval.fid_ref is unset but eval.fid_every > 0: set it to a reference .npz (e.g. ADM's "
                       "VIRTUAL_imagenet64_labeled.npz) or 'dataset' (statistics of eval.fid_ref_num training images)")
    if not (self.ref == "dataset" or self.ref.startswith("dataset:") or reference_exists(self.ref)):
      raise ValueError(f"eval.fid_ref={self.ref!r} does not exist; give a reference .npz or 'dataset'")
    # Used only when the first FID runs, after training steps: checked now.
    for field in ("fid_gen_batch", "fid_shard"):
      if int(ec[field]) < 1:
        raise ValueError(f"eval.{field} must be >= 1 (images per batch / per shard file), got {ec[field]}")
    if (self.ref == "dataset" or self.ref.startswith("dataset:")) and int(ec.fid_ref_num) < 2:
      raise ValueError(f"eval.fid_ref_num must be >= 2 images for eval.fid_ref={self.ref!r} (a covariance), "
                       f"got {ec.fid_ref_num}")
    self.features = features_from_config(ec, mesh)

  def due(self, step: int) -> bool:
    return bool(self.every) and step > 0 and step % self.every == 0

  def start(self, step: int, state, generator, writer) -> None:
    """The run's generator and metric writer. A run stopped after the checkpoint at `step` but
    before that step's FID was logged computes it now (process 0's metrics decide; earlier FIDs
    are kept, never recomputed)."""
    self.generator, self.writer = generator, writer
    if self.due(step) and agree(not any(r["step"] == step for r in read_metrics(self.workdir, "fid"))):
      self.after_step(step, state, None)

  def after_step(self, step, state, metrics) -> None:
    if self.due(step):
      res = self(self.generator, state.ema_params, step)
      self.writer.write(step, res, kind="fid")
      self.writer.flush()
      self.log(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in res.items()))

  def __call__(self, generator, params, step: int) -> dict:
    ec, s = self.config.eval, self.config.sample
    fid_dir = os.path.join(self.workdir, "fid")
    if self._reference is None:   # once per run; cached under fid_dir for `dataset`
      self._reference, _ = resolve_reference(self.ref, self.config.data, self.features, fid_dir,
                                             ref_num=int(ec.fid_ref_num))
    seed = int(ec.seed)
    out_dir = os.path.join(fid_dir, run_tag(step, self.num, seed, s.steps, s.method, s.cfg_scale))
    result = run_fid(
        generator, params, self.features.mesh, out_dir=out_dir, num=self.num, features=self.features,
        reference=self._reference, labels=balanced_labels(self.num, generator.num_classes), seed=seed,
        steps=s.steps, method=s.method, cfg_scale=s.cfg_scale, gen_batch=int(ec.fid_gen_batch),
        shard_size=int(ec.fid_shard), progress=False, log=self.log)
    return {k: float(result[k]) for k in ("fid", "sfid", "inception_score") if k in result}
