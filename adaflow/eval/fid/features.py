"""The FID Inception as a batched feature extractor (pool, logits and spatial features of uint8
images, sharded over the mesh when one is given), and model-range images -> uint8 pixels."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Optional

import chex
import jax.numpy as jnp
import numpy as np

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
