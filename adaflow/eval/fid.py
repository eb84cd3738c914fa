"""The FID-50K protocol: generation in resumable shards, Inception features, float64 statistics.

Pipeline (`run_fid`)::

  labels (class-balanced, [num])  --split-->  shards of `shard_size`
  shard i: generate_images(objective, params, mesh, fold_in(key(seed), i), labels_i)   (sharded
           over the mesh) -> quantize to uint8 like saved samples -> samples_<i>.npz
           -> Inception pool/logits in fixed-size batches (sharded over the mesh) -> features_<i>.npz
  all shards: StreamingStatistics (float64, host) -> (mu, sigma) -> frechet_distance(ref)
              + Inception Score (10 splits) + precision/recall (k-NN manifolds, k = 3, optional)

Every shard is written atomically under `<workdir>/fid/<tag>/`, and shard i depends only on
(seed, i), so a killed run resumes where it stopped and gives the same numbers as an
uninterrupted one. Features are cached per shard together with the Inception weights' identity
and resize mode; a different network recomputes them from the stored images.

Reference statistics (`load_reference`):
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
from typing import Any, Callable, Dict, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from adaflow import data as data_lib
from adaflow import storage
from adaflow.eval import inception as inception_lib
from adaflow.eval.frechet import StreamingStatistics, frechet_distance
from adaflow.flow.driver import generate_images
from adaflow.parallel import batch_sharding
from adaflow.parallel.host import agree, barrier, is_writer, to_global, to_host


# ----------------------------------------------------------------------------------------------
# Feature extraction.
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class InceptionFeatures:
  """The FID Inception as a batched feature extractor.

  `params`: Inception params (from `load_inception_params` or `init_random_params`);
  `identity`: a string naming the weights (sha256 prefix of the file, or "random-<seed>"), stored
  next to cached features; `resize`: "tf" or "pytorch" (see `adaflow.eval.inception`);
  `batch_size`: images per forward (a multiple of the mesh's batch shards when `mesh` is given);
  `size`: network input size (299 for real FIDs; smaller only for tests).
  """
  params: Any
  identity: str
  resize: str = "tf"
  batch_size: int = 100
  size: int = inception_lib.INPUT_SIZE
  mesh: Optional[Any] = None

  def __post_init__(self):
    if self.resize not in inception_lib.RESIZE_MODES:
      raise ValueError(f"resize={self.resize!r} is not one of {inception_lib.RESIZE_MODES} (--fid_resize).")
    if self.batch_size < 1:
      raise ValueError(f"feature batch_size must be >= 1 (--fid_batch); got {self.batch_size}.")
    if self.mesh is not None:
      shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
      self.batch_size = max(shards, self.batch_size - self.batch_size % shards)
    self._fn = inception_lib.make_feature_fn(self.params, resize=self.resize, size=self.size)

  @property
  def key(self) -> str:
    return f"{self.identity}/{self.resize}/{self.size}"

  def __call__(self, pixels: np.ndarray, progress: Optional[Callable[[int], None]] = None
               ) -> Dict[str, np.ndarray]:
    """pixels uint8 [N, H, W, C] (C = 1 or 3) -> {"pool": float32 [N, 2048], "logits": [N, 1008],
    "spatial": [N, 2023 at 299 input]} (spatial: sFID features, see `adaflow.eval.inception`).

    Batches have a fixed size (the last one is padded) so one program is compiled."""
    pixels = np.asarray(pixels)
    chex.assert_rank(pixels, 4)
    if pixels.shape[-1] == 1:
      pixels = np.repeat(pixels, 3, axis=-1)
    if pixels.shape[-1] != 3:
      raise ValueError(f"images must have 1 or 3 channels; got shape {pixels.shape}.")
    pools, logits, spatial = [], [], []
    b = self.batch_size
    for start in range(0, len(pixels), b):
      chunk = pixels[start:start + b]
      n = len(chunk)
      if n < b:
        chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
      # On a mesh the batch is split over ('data', 'fsdp'), possibly across processes; every
      # process passes the same chunk and gets all features back.
      x = to_global(chunk, batch_sharding(self.mesh)) if self.mesh is not None else jnp.asarray(chunk)
      out = to_host(self._fn(x))
      pools.append(np.asarray(out["pool"], np.float32)[:n])
      logits.append(np.asarray(out["logits"], np.float32)[:n])
      spatial.append(np.asarray(out["spatial"], np.float32)[:n])
      if progress is not None:
        progress(n)
    if not pools:
      return {"pool": np.zeros((0, inception_lib.FEATURE_DIM), np.float32),
              "logits": np.zeros((0, inception_lib.NUM_LOGITS), np.float32),
              "spatial": np.zeros((0, 0), np.float32)}
    return {"pool": np.concatenate(pools), "logits": np.concatenate(logits), "spatial": np.concatenate(spatial)}


def build_inception_features(weights: Optional[str], *, random_seed: Optional[int] = None,
                             resize: str = "tf", batch_size: int = 100,
                             size: int = inception_lib.INPUT_SIZE, mesh=None) -> InceptionFeatures:
  """The standard weights from `weights` (default location if None), or random weights when
  `random_seed` is given (smoke tests only: such FIDs mean nothing)."""
  if random_seed is not None:
    params, identity = inception_lib.init_random_params(random_seed), f"random-{random_seed}"
  else:
    path = os.path.expanduser(weights) if weights else inception_lib.default_weights_path()
    params = inception_lib.load_inception_params(path)
    identity = "sha256:" + inception_lib.file_sha256(path)[:16]
  return InceptionFeatures(params, identity, resize=resize, batch_size=batch_size, size=size, mesh=mesh)


def model_to_pixels(images: np.ndarray) -> np.ndarray:
  """Model-range images [N, H, W, C] in [-1, 1] -> uint8 [N, H, W, C] (round((x + 1) * 127.5))."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Metrics beyond FID.
# ----------------------------------------------------------------------------------------------

def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """Inception Score from the 1008-way logits [N, 1008]: mean and std over `splits` splits of
  exp(E_x KL(p(y|x) || p(y))), in float64."""
  logits = np.asarray(logits, np.float64)
  chex.assert_rank(logits, 2)
  if len(logits) < splits:
    raise ValueError(f"Inception Score with {splits} splits needs at least {splits} images; got {len(logits)}.")
  logp = logits - logits.max(axis=1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(logp, splits):
    p = np.exp(part)
    with np.errstate(divide="ignore", invalid="ignore"):
      log_py = np.log(p.mean(axis=0))
      kl = np.where(p > 0, p * (part - log_py), 0.0)   # 0 log 0 = 0
    scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Squared Euclidean distances [len(a), len(b)] in float64 accumulation of float32 matmuls."""
  d = (np.sum(a.astype(np.float64) ** 2, 1)[:, None] + np.sum(b.astype(np.float64) ** 2, 1)[None, :]
       - 2.0 * (a @ b.T).astype(np.float64))
  return np.maximum(d, 0.0)


def _knn_radii(feats: np.ndarray, k: int, chunk: int) -> np.ndarray:
  """[N] squared distance of each point to its k-th nearest other point of the same set."""
  radii = np.empty(len(feats), np.float64)
  for s in range(0, len(feats), chunk):
    d = _sq_dists(feats[s:s + chunk], feats)
    radii[s:s + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
  return radii


def _coverage(queries: np.ndarray, support: np.ndarray, radii: np.ndarray, chunk: int) -> float:
  """Fraction of queries inside the union of balls (support_i, radius_i)."""
  inside = 0
  for s in range(0, len(queries), chunk):
    d = _sq_dists(queries[s:s + chunk], support)
    inside += int(np.sum(np.any(d <= radii[None, :], axis=1)))
  return inside / len(queries)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1000) -> Dict[str, float]:
  """Improved precision and recall (k-NN manifolds, Kynkaanniemi et al. 2019) of features
  real [N, F] and fake [M, F]: precision = share of fake inside the real manifold, recall = share
  of real inside the fake manifold; a manifold is the union of balls reaching each point's k-th
  nearest neighbour."""
  real = np.asarray(real, np.float32)
  fake = np.asarray(fake, np.float32)
  if min(len(real), len(fake)) <= k:
    raise ValueError(f"precision/recall with k={k} needs more than {k} real and fake features.")
  precision = _coverage(fake, real, _knn_radii(real, k, chunk), chunk)
  recall = _coverage(real, fake, _knn_radii(fake, k, chunk), chunk)
  return {"precision": precision, "recall": recall}


# ----------------------------------------------------------------------------------------------
# Reference statistics.
# ----------------------------------------------------------------------------------------------

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


def load_reference(path: str, features: Optional[InceptionFeatures] = None, progress=None) -> Reference:
  """Reference statistics from an npz (see module docstring). `features` is needed only when the
  file holds images (`arr_0`) and no `mu`/`sigma`."""
  if not (storage.exists(path) if storage.is_remote(path) else os.path.isfile(path)):
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
      return Reference(mu, sigma, acts, f"{path} (mu/sigma)", *spatial)
    if acts is not None:
      mu, sigma = _stats_from_activations(acts)
      return Reference(mu, sigma, acts, f"{path} (activations)", *spatial)
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
  _atomic_savez(path, **arrays)


# ----------------------------------------------------------------------------------------------
# Resumable generation.
# ----------------------------------------------------------------------------------------------

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


def run_tag(step: int, num: int, seed: int, steps: int, method: str, cfg_scale: float) -> str:
  return f"step{step}_n{num}_seed{seed}_{method}{steps}_cfg{cfg_scale:g}"


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
    fpath = path.replace("samples_", "features_")
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


def statistics_of_shards(shard_feats: list) -> StreamingStatistics:
  """float64 streaming statistics merged over shards (equal to one-shot statistics)."""
  total = StreamingStatistics()
  for f in shard_feats:
    total.merge(StreamingStatistics().update(f["pool"]))
  return total


def _progress_bar(total: int, desc: str, enabled: bool):
  if not enabled:
    return None, lambda: None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
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
      "resize": features.resize, "input_size": features.size, "sample_steps": int(steps),
      "sample_method": method, "cfg_scale": float(cfg_scale), "seed": int(seed),
  }
  if reference.mu_s is not None:   # sFID: the same Frechet distance on the spatial features
    spatial = StreamingStatistics()
    for f in feats:
      spatial.merge(StreamingStatistics().update(f["spatial"]))
    mu_s, sigma_s = spatial.result()
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
    cache = os.path.join(fid_dir, reference_cache_name(source, features))
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


def reference_cache_name(source: str, features: InceptionFeatures) -> str:
  h = hashlib.sha256(f"{source}|{features.key}|spatial".encode()).hexdigest()[:12]   # with sFID statistics
  return f"ref_{h}.npz"
