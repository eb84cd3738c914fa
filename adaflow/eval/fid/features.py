"""The FID Inception as a batched feature extractor (pool, logits and spatial features of uint8
images, sharded over the mesh when one is given), and model-range images -> uint8 pixels."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Optional

import chex
import jax.numpy as jnp
import numpy as np

from adaflow import storage
from adaflow.eval import inception as inception_lib
from adaflow.parallel import batch_sharding
from adaflow.parallel.host import to_global, to_host


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


def weights_path(weights: Optional[str]) -> str:
  """`eval.fid_inception` / `--inception` -> the file to read: the default location when empty."""
  if not weights:
    return inception_lib.default_weights_path()
  return weights if storage.is_remote(weights) else os.path.expanduser(weights)


def check_weights(eval_config) -> None:
  """Before any sampling: the Inception weights `eval.fid_inception` names exist (a local file or a
  gs:// object), unless `eval.fid_random_inception` asks for random weights."""
  if int(eval_config.fid_random_inception) >= 0:
    return
  path = weights_path(str(eval_config.fid_inception))
  if not (storage.exists(path) if storage.is_remote(path) else os.path.isfile(path)):
    raise ValueError("eval.fid_inception: " + inception_lib.missing_weights_message(path))


def features_from_config(eval_config, mesh=None) -> "InceptionFeatures":
  """The Inception feature extractor `config.eval.fid_*` describe (weights checked first)."""
  check_weights(eval_config)
  seed = int(eval_config.fid_random_inception)
  return build_inception_features(str(eval_config.fid_inception) or None, random_seed=seed if seed >= 0 else None,
                                  resize=eval_config.fid_resize, batch_size=int(eval_config.fid_batch),
                                  size=int(eval_config.fid_input_size), mesh=mesh)


def build_inception_features(weights: Optional[str], *, random_seed: Optional[int] = None,
                             resize: str = "tf", batch_size: int = 100,
                             size: int = inception_lib.INPUT_SIZE, mesh=None) -> InceptionFeatures:
  """The standard weights from `weights` (a local path or gs:// URI; default location if None), or
  random weights when `random_seed` is given (smoke tests only: such FIDs mean nothing)."""
  if random_seed is not None:
    params, identity = inception_lib.init_random_params(random_seed), f"random-{random_seed}"
  else:
    path = weights_path(weights)
    with storage.local_copy(path) as local:
      params = inception_lib.load_inception_params(local)
      identity = "sha256:" + inception_lib.file_sha256(local)[:16]
  return InceptionFeatures(params, identity, resize=resize, batch_size=batch_size, size=size, mesh=mesh)


def model_to_pixels(images: np.ndarray) -> np.ndarray:
  """Model-range images [N, H, W, C] in [-1, 1] -> uint8 [N, H, W, C] (round((x + 1) * 127.5))."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
