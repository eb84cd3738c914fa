"""Resumable FID shards under `<workdir>/fid/<tag>/`: `samples_<i>.npz` (uint8 images and labels)
and `features_<i>.npz` (Inception features, cached with the weights' identity and resize mode).
Every shard is written atomically, from process 0, and shard i depends only on (seed, i), so a
killed run resumes where it stopped and gives the same numbers as an uninterrupted one."""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional

import chex
import numpy as np

from adaflow import storage
from adaflow.eval.fid.features import InceptionFeatures, model_to_pixels
from adaflow.eval.frechet import StreamingStatistics
from adaflow.parallel.host import agree, barrier, is_writer


def _atomic_savez(path: str, **arrays) -> None:
  """Writes `path` atomically, from process 0 only (the others computed the same arrays)."""
  if not is_writer():
    return
  storage.save_npz(path, atomic=True, **arrays)


def _read_npz(path: str) -> Optional[Dict[str, np.ndarray]]:
  try:
    with storage.open_npz(path) as z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError):
    return None  # a torn or foreign file: treated as missing and regenerated


def shard_plan(num: int, shard_size: int):
  """[(index, start, stop)] covering range(num) in shards of `shard_size`."""
  if num < 2:
    raise ValueError(f"--num must be at least 2 images for a covariance; got {num}.")
  if shard_size < 1:
    raise ValueError(f"--fid_shard must be >= 1; got {shard_size}.")
  return [(i, s, min(s + shard_size, num)) for i, s in enumerate(range(0, num, shard_size))]


def generate_shards(generate: Callable[[int, np.ndarray], np.ndarray], labels: np.ndarray, out_dir: str,
                    shard_size: int, progress=None, log=print) -> list:
  """Generates the missing `samples_<i>.npz` shards (uint8 `images` [n, H, W, C], int32 `labels`).

  generate(i, labels_i [n]) -> images [n, H, W, C] in [-1, 1]; it must be a pure function of
  (i, labels_i) for resumption to be exact. Returns the list of shard paths in order."""
  storage.makedirs(out_dir)
  paths = []
  for i, start, stop in shard_plan(len(labels), shard_size):
    path = os.path.join(out_dir, f"samples_{i:05d}.npz")
    paths.append(path)
    have = _read_npz(path) if storage.exists(path) else None
    complete = have is not None and have.get("images") is not None and len(have["images"]) == stop - start
    if agree(complete):   # process 0 decides, so no process skips a generation the others run
      if progress is not None:
        progress(stop - start)
      continue
    images = np.asarray(generate(i, labels[start:stop]))
    chex.assert_axis_dimension(images, 0, stop - start)
    _atomic_savez(path, images=model_to_pixels(images), labels=labels[start:stop].astype(np.int32))
    if progress is not None:
      progress(stop - start)
  barrier("fid sample shards written")   # the other processes read the shards next
  return paths


def shard_features(sample_paths: list, features: InceptionFeatures, progress=None) -> list:
  """Features for each shard, cached in `features_<i>.npz` next to it (recomputed when the
  cached ones come from another Inception / resize). Returns [{"pool", "logits"}] per shard."""
  out = []
  for path in sample_paths:
    head, name = os.path.split(path)   # only the file's name: a directory may be called samples_* too
    fpath = os.path.join(head, name.replace("samples_", "features_", 1))
    cached = _read_npz(fpath) if storage.exists(fpath) else None
    if agree(cached is not None and str(cached.get("inception", "")) == features.key and "spatial" in cached):
      out.append(cached)
      if progress is not None:
        progress(len(cached["pool"]))
      continue
    shard = _read_npz(path)
    if shard is None:
      raise ValueError(f"sample shard {path} is unreadable; delete it and rerun to regenerate it.")
    feats = features(shard["images"], progress=progress)
    _atomic_savez(fpath, pool=feats["pool"], logits=feats["logits"], spatial=feats["spatial"],
                  inception=np.asarray(features.key))
    out.append(feats)
  barrier("fid feature shards written")
  return out


def statistics_of_shards(shard_feats: list, key: str = "pool") -> StreamingStatistics:
  """float64 streaming statistics of the `key` features ("pool", or "spatial" for sFID) merged over
  shards (equal to one-shot statistics)."""
  total = StreamingStatistics()
  for f in shard_feats:
    total.merge(StreamingStatistics().update(f[key]))
  return total
