"""Reference statistics for FID (`load_reference`, `resolve_reference`):
* an `.npz` with `mu` [2048] and `sigma` [2048, 2048] (the ADM reference batches such as
  `VIRTUAL_imagenet64_labeled.npz` carry them, computed with the TF graph), or
* an `.npz` with raw `activations` [N, 2048], or
* an `.npz` with images `arr_0` uint8 [N, H, W, 3] (the ADM reference / sample batch format):
  activations are computed here with the given Inception;
* `reference_from_dataset`: the first `num` images of a dataset (`adaflow.data.load_arrays`).
All `.npz` files are read with `allow_pickle=False`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional

import numpy as np

from adaflow import data as data_lib
from adaflow import storage
from adaflow.eval.fid.features import InceptionFeatures, model_to_pixels
from adaflow.eval.fid.shards import _atomic_savez
from adaflow.eval.frechet import StreamingStatistics
from adaflow.eval.inception import FEATURE_DIM
from adaflow.parallel.host import agree


@dataclasses.dataclass
class Reference:
  """mu [2048], sigma [2048, 2048] float64; `activations` [N, 2048] when known (for P/R);
  `mu_s` [D], `sigma_s` [D, D] the spatial (sFID) statistics when known (ADM's reference batches
  store them under these names)."""
  mu: np.ndarray
  sigma: np.ndarray
  activations: Optional[np.ndarray]
  source: str
  mu_s: Optional[np.ndarray] = None
  sigma_s: Optional[np.ndarray] = None


def _stats_from_activations(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  return StreamingStatistics().update(acts).result()


def _check_stats(path: str, ref: Reference) -> Reference:
  """ValueError, before any sample is generated, when the file's statistics are not those of the
  Inception pool features (e.g. another network's): FID would fail only after generating."""
  d = FEATURE_DIM
  if ref.mu.shape != (d,) or ref.sigma.shape != (d, d) or (ref.activations is not None and
                                                          (ref.activations.ndim != 2 or ref.activations.shape[1] != d)):
    acts = "" if ref.activations is None else f", activations {ref.activations.shape}"
    raise ValueError(f"--ref={path}: mu {ref.mu.shape}, sigma {ref.sigma.shape}{acts} are not statistics of the "
                     f"{d}-d Inception pool features (mu [{d}], sigma [{d}, {d}], activations [N, {d}]); "
                     "use a reference batch made with this Inception (e.g. ADM's) or --ref=dataset")
  if ref.mu_s is not None and (ref.mu_s.ndim != 1 or ref.sigma_s.shape != (ref.mu_s.size,) * 2):
    raise ValueError(f"--ref={path}: mu_s {ref.mu_s.shape} and sigma_s {ref.sigma_s.shape} do not match "
                     "(mu_s [D], sigma_s [D, D]); fix or drop them (FID does not need them, sFID does)")
  return ref


def reference_exists(path: str) -> bool:
  """Whether a reference .npz is there: a file locally, an object on gs:// (etils.epath)."""
  return storage.exists(path) if storage.is_remote(path) else os.path.isfile(path)


def load_reference(path: str, features: Optional[InceptionFeatures] = None, progress=None) -> Reference:
  """Reference statistics from an npz (see module docstring). `features` is needed only when the
  file holds images (`arr_0`) and no `mu`/`sigma`."""
  if not reference_exists(path):
    raise ValueError(f"--ref={path} does not exist; give a reference batch .npz (e.g. ADM's "
                     "VIRTUAL_imagenet64_labeled.npz) or --ref=dataset to use the run's dataset.")
  with storage.open_npz(path) as z:
    keys = set(z.files)
    acts = np.asarray(z["activations"], np.float32) if "activations" in keys else None
    spatial = ((np.asarray(z["mu_s"], np.float64), np.asarray(z["sigma_s"], np.float64))
               if {"mu_s", "sigma_s"} <= keys else (None, None))
    if "mu" in keys and "sigma" in keys:
      # mu/sigma suffice for FID; `arr_0` images are only read for precision/recall
      # (`reference_images`, used by the fid command when --fid_pr is set).
      mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
      return _check_stats(path, Reference(mu, sigma, acts, f"{path} (mu/sigma)", *spatial))
    if acts is not None:
      if acts.ndim != 2:
        raise ValueError(f"--ref={path}: activations must be [N, {FEATURE_DIM}]; got {acts.shape}")
      mu, sigma = _stats_from_activations(acts)
      return _check_stats(path, Reference(mu, sigma, acts, f"{path} (activations)", *spatial))
    if "arr_0" in keys:
      if features is None:
        raise ValueError(f"{path} holds images (arr_0) but no mu/sigma: an Inception is needed.")
      images = z["arr_0"]
    else:
      raise ValueError(f"{path} has keys {sorted(keys)}; expected mu+sigma, activations, or arr_0 images.")
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f"{path}: arr_0 must be uint8 images [N, H, W, C]; got {images.dtype} {images.shape}.")
  feats = features(images, progress=progress)
  mu, sigma = _stats_from_activations(feats["pool"])
  return Reference(mu, sigma, feats["pool"], f"{path} (arr_0 images through this Inception)",
                   *_stats_from_activations(feats["spatial"]))


def reference_images(path: str) -> Optional[np.ndarray]:
  """The `arr_0` images of a reference npz, or None."""
  with storage.open_npz(path) as z:
    return np.asarray(z["arr_0"]) if "arr_0" in z.files else None


def reference_from_dataset(data_config, num: int, features: InceptionFeatures, *, split: Optional[str] = None,
                           seed: int = 0, progress=None) -> Reference:
  """Statistics of `num` images of a dataset (`adaflow.data.load_arrays`, quantized to uint8)."""
  images, _ = data_lib.load_arrays(data_config, num, seed=seed, split=split)
  feats = features(model_to_pixels(images), progress=progress)
  mu, sigma = _stats_from_activations(feats["pool"])
  return Reference(mu, sigma, feats["pool"], f"dataset {data_config.name} split {split or data_config.split} "
                   f"({num} images)", *_stats_from_activations(feats["spatial"]))


def save_reference(ref: Reference, path: str) -> None:
  """Writes mu/sigma (and activations) as an npz readable by `load_reference`."""
  arrays = {"mu": ref.mu, "sigma": ref.sigma}
  if ref.mu_s is not None:
    arrays.update(mu_s=ref.mu_s, sigma_s=ref.sigma_s)
  if ref.activations is not None:
    arrays["activations"] = ref.activations
  _atomic_savez(path, **arrays)   # from process 0 (the others computed the same arrays)


def resolve_reference(ref_arg: str, data_config, features: InceptionFeatures, fid_dir: str, *, ref_num: int,
                      with_pr: bool = False) -> tuple[Reference, Optional[np.ndarray]]:
  """(reference, images for precision/recall or None) for `--ref` / `eval.fid_ref`: an .npz path, or
  `dataset[:split]` (`ref_num` images of the run's dataset, statistics cached under `fid_dir`).
  Collective on several processes (process 0 decides whether the cache exists)."""
  if not ref_arg:
    raise ValueError("the FID reference is unset: pass --ref (adaflow eval fid) or set eval.fid_ref (training) to "
                     "a reference .npz (e.g. ADM's VIRTUAL_imagenet64_labeled.npz) or 'dataset'")
  if ref_arg == "dataset" or ref_arg.startswith("dataset:"):
    split = ref_arg.split(":", 1)[1] if ":" in ref_arg else None
    source = f"dataset|{data_config.name}|{split}|{ref_num}"
    storage.makedirs(fid_dir)
    h = hashlib.sha256(f"{source}|{features.key}|spatial".encode()).hexdigest()[:12]   # with sFID statistics
    cache = os.path.join(fid_dir, f"ref_{h}.npz")
    if agree(storage.exists(cache)):   # process 0 decides: computing the reference is collective
      reference = load_reference(cache)
      reference.source = f"dataset {data_config.name} ({ref_num} images, cached {cache})"
    else:
      reference = reference_from_dataset(data_config, ref_num, features, split=split)
      save_reference(reference, cache)
    return reference, None
  reference = load_reference(ref_arg, features)
  ref_images = reference_images(ref_arg) if with_pr and reference.activations is None else None
  return reference, ref_images
