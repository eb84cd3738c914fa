"""The FID-50K protocol: generation in resumable shards, Inception features, float64 statistics.

Pipeline (`run_fid`)::

  labels (class-balanced, [num])  --split-->  shards of `shard_size`
  shard i: generate_images(objective, params, mesh, fold_in(key(seed), i), labels_i)   (sharded
           over the mesh) -> quantize to uint8 like saved samples -> samples_<i>.npz
           -> Inception pool/logits in fixed-size batches (sharded over the mesh) -> features_<i>.npz
  all shards: StreamingStatistics (float64, host) -> (mu, sigma) -> frechet_distance(ref)
              + Inception Score (10 splits) + precision/recall (k-NN manifolds, k = 3, optional)

Shards: `adaflow.eval.fid.shards`; features: `.features`; references: `.reference`; IS and
precision/recall: `.scores`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import chex
import jax
import numpy as np
from tqdm import tqdm

from adaflow import storage
from adaflow.eval.fid.features import InceptionFeatures
from adaflow.eval.fid.reference import Reference
from adaflow.eval.fid.scores import inception_score, precision_recall
from adaflow.eval.fid.shards import generate_shards, shard_features, statistics_of_shards
from adaflow.eval.frechet import frechet_distance
from adaflow.flow.driver import generate_images
from adaflow.parallel.host import is_writer


def run_tag(step: int, num: int, seed: int, steps: int, method: str, cfg_scale: float) -> str:
  return f"step{step}_n{num}_seed{seed}_{method}{steps}_cfg{cfg_scale:g}"


def _progress_bar(total: int, desc: str, enabled: bool):
  if not (enabled and is_writer()):   # one bar per job, as one log: process 0's
    return None, lambda: None
  bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
  return bar.update, bar.close


def run_fid(objective, params, mesh, *, out_dir: str, num: int, features: InceptionFeatures,
            reference: Reference, labels: np.ndarray, seed: int, steps: int, method: str,
            cfg_scale: float, gen_batch: int = 256, shard_size: int = 1000, with_pr: bool = False,
            pr_num: int = 10000, ref_images: Optional[np.ndarray] = None, progress: bool = True,
            log=print) -> Dict[str, Any]:
  """The whole protocol for one generator; writes `<out_dir>/result.json` and returns it.

  labels [num] int32 (class labels for the samples); shard i is generated with
  `generate_images(..., fold_in(PRNGKey(seed), i), labels_i, batch_size=gen_batch)`."""
  labels = np.asarray(labels, np.int32)
  chex.assert_shape(labels, (num,))
  key = jax.random.PRNGKey(seed)

  def generate(i, labels_i):
    return generate_images(objective, params, mesh, jax.random.fold_in(key, i), labels_i, steps=steps,
                           method=method, cfg_scale=cfg_scale, batch_size=gen_batch)

  update, close = _progress_bar(num, "generate", progress)
  paths = generate_shards(generate, labels, out_dir, shard_size, progress=update, log=log)
  close()
  update, close = _progress_bar(num, "inception", progress)
  feats = shard_features(paths, features, progress=update)
  close()
  stats = statistics_of_shards(feats)
  mu, sigma = stats.result()
  result: Dict[str, Any] = {
      "fid": frechet_distance(mu, sigma, reference.mu, reference.sigma),
      "num": int(stats.count), "reference": reference.source, "inception": features.identity,
      "resize": features.resize, "input_size": features.size,
      **objective.sampling_record(steps, method, cfg_scale), "seed": int(seed),
  }
  if reference.mu_s is not None:   # sFID: the same Frechet distance on the spatial features
    mu_s, sigma_s = statistics_of_shards(feats, "spatial").result()
    if mu_s.shape != reference.mu_s.shape:
      raise ValueError(f"the reference's spatial statistics have {reference.mu_s.shape[0]} dims but this Inception "
                       f"gives {mu_s.shape[0]} (input size {features.size}); use the same --fid_input_size")
    result["sfid"] = frechet_distance(mu_s, sigma_s, reference.mu_s, reference.sigma_s)
  logits = np.concatenate([f["logits"] for f in feats])
  if len(logits) >= 10:
    result["inception_score"], result["inception_score_std"] = inception_score(logits)
  if with_pr:
    real = reference.activations
    if real is None and ref_images is not None:
      real = features(ref_images[:pr_num])["pool"]
    if real is None:
      log("precision/recall skipped: the reference has no activations or images")
    else:
      fake = np.concatenate([f["pool"] for f in feats])[:pr_num]
      result.update(precision_recall(real[:pr_num], fake, k=3))
      result["pr_num"] = int(min(len(real), len(fake), pr_num))
  if is_writer():
    storage.write_json(os.path.join(out_dir, "result.json"), result, indent=2)
  return result
