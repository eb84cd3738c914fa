"""The one sampling driver: rows (labels, noise, ...) -> a jitted function in batches, sharded on
the mesh's batch axes, gathered on every process. Used by training-time sample grids, `adaflow
sample`, evaluation, FID shards, the composed sampler and the step policy's grouped sampling.

Batches are padded only up to the next bucket (`batch_buckets`: the shard count times a power of
two, from `smallest`), so at most log2(batch_size / shards) + 1 programs are compiled per setting.
`generate_images` runs a generator (duck-typed: `.generate(params, rng, labels, *, steps, method,
cfg_scale)` and `.specialize(params)`, the generator to sample those params with) whose jitted
sampler is compiled once per generator and setting (`make_generate_fn`).
"""
from __future__ import annotations

import functools
import weakref
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from adaflow.parallel import batch_sharding
from adaflow.parallel.host import to_global, to_host


def balanced_labels(num: int, num_classes: int) -> np.ndarray:
  """[num] labels cycling through the classes (equal counts when num % num_classes == 0)."""
  return (np.arange(num) % max(num_classes, 1)).astype(np.int32)


class _WeakKey:
  """Hashable stand-in for a generator in the sampler cache: equal only while the very same object
  is alive (identity, not `__eq__`, so unhashable dataclass generators work too). Holding it does
  not keep the generator alive; a dead key never matches a new object at the same address."""
  __slots__ = ("ref", "ident")

  def __init__(self, obj):
    self.ref, self.ident = weakref.ref(obj), id(obj)

  def __hash__(self):
    return self.ident

  def __eq__(self, other):
    return isinstance(other, _WeakKey) and self.ref() is not None and self.ref() is other.ref()


# Why an lru_cache keyed on a weak reference, not a cache object the caller passes: every caller
# (train-time sample grids, `adaflow sample`, evaluation, FID shards, benchmarks) then shares the
# compiled sampler without threading a cache through their signatures, the key cannot keep a
# generator (and its params closure) alive, and maxsize bounds what a long run can accumulate.
@functools.lru_cache(maxsize=32)
def _cached_sampler(key: _WeakKey, mesh: Mesh, steps: int, method: str, cfg_scale: float) -> Callable:
  ref = key.ref

  def gen(params, rng, labels):
    return ref().generate(params, rng, labels, steps=steps, method=method, cfg_scale=cfg_scale)

  # jax.jit keeps one executable per input shape, so the batch-shape part of the key is jit's own.
  return jax.jit(gen, out_shardings=batch_sharding(mesh))


def make_generate_fn(generator, mesh: Mesh, *, steps: int, method: str, cfg_scale: float) -> Callable:
  """jitted (params, rng, labels [B]) -> images [B, H, W, C], batch sharded over the mesh.

  `generator` is duck-typed: `.generate(params, rng, labels, *, steps, method, cfg_scale)`. The
  jitted function is cached per (generator, mesh, steps, method, cfg_scale) and, inside jit, per
  batch shape: a second call with the same settings compiles nothing. Generators that cannot be
  weakly referenced get a fresh (uncached) function.
  """
  try:
    key = _WeakKey(generator)
  except TypeError:
    gen = functools.partial(generator.generate, steps=steps, method=method, cfg_scale=cfg_scale)
    return jax.jit(gen, out_shardings=batch_sharding(mesh))
  return _cached_sampler(key, mesh, int(steps), str(method), float(cfg_scale))


def batch_buckets(batch_size: int, shards: int, smallest: int = 1) -> list[int]:
  """The few batch sizes sampling compiles for: shards * 2^k from `smallest` (rounded up to a
  multiple of `shards`) below `batch_size`, then `batch_size` (already a multiple of `shards`).
  E.g. (256, 1) -> [1, 2, 4, ..., 128, 256]; (100, 1, 8) -> [8, 16, 32, 64, 100]."""
  sizes, b = [], shards * max(1, -(-smallest // shards))
  while b < batch_size:
    sizes.append(b)
    b *= 2
  return sizes + [batch_size]


def map_batches(fn: Callable, mesh: Mesh, rows: Sequence[np.ndarray], batch_size: int, *, smallest: int = 1,
                progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
  """rows (arrays [N, ...]) -> fn(i, *batch i's rows) for batches of `batch_size` (rounded to a
  multiple of the mesh's batch-sharding axes), concatenated: [N, ...] numpy on every process.

  Each batch is zero-padded up to its bucket (`batch_buckets`) and sharded on the mesh's batch axes
  (every process holds the same rows and fills its own shards); the padded outputs are dropped.
  `progress(n)` is called after each batch of n rows."""
  n = len(rows[0])
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  batch_size = max(shards, batch_size - batch_size % shards)
  buckets = batch_buckets(batch_size, shards, smallest)
  sharding = batch_sharding(mesh)
  out = []
  for i, start in enumerate(range(0, n, batch_size)):
    chunk = [np.asarray(r[start:start + batch_size]) for r in rows]
    m = len(chunk[0])
    size = next(b for b in buckets if b >= m)
    padded = [to_global(np.concatenate([c, np.zeros((size - m,) + c.shape[1:], c.dtype)]), sharding) for c in chunk]
    out.append(to_host(fn(i, *padded))[:m])    # every process gets all rows (collective)
    if progress is not None:
      progress(m)
  return np.concatenate(out, axis=0)


def generate_images(generator, params, mesh: Mesh, rng: jax.Array, labels: np.ndarray, *, steps: int,
                    method: str, cfg_scale: float, batch_size: int = 256, progress=None) -> np.ndarray:
  """labels [N] -> images [N, H, W, C] as numpy, generated in batches of `batch_size` (`map_batches`);
  batch i draws its noise from fold_in(rng, i).

  40 images with batch_size 256 compute 64, not 256. Full batches are unchanged by bucketing; images
  of the last batch differ from those of a fully padded batch (the same fold_in(rng, i) key draws
  noise of another shape).

  `generator.specialize(params)` samples: what is static in the params (routing's snapped ratios)
  is then compiled in, not traced.
  """
  fn = make_generate_fn(generator.specialize(params), mesh, steps=steps, method=method, cfg_scale=cfg_scale)
  return map_batches(lambda i, y: fn(params, jax.random.fold_in(rng, i), y), mesh,
                     [np.asarray(labels, np.int32)], batch_size, progress=progress)
