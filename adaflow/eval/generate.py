"""Sampling and quality evaluation of a trained generator (sharded over the mesh): the eval layer's
way to turn a generator + params into images and scores. The `generator` argument is the run's
sampler (adaflow.compose.generator_for), duck-typed: `.generate(params, rng, labels, *, steps,
method, cfg_scale)` and `.num_classes`. Samplers are compiled once per generator and setting and
reused across calls (`make_generate_fn`)."""
from __future__ import annotations

import functools
import time
import weakref
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from adaflow.eval.classifier import get_classifier
from adaflow.eval.quality import evaluate_samples
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


def batch_buckets(batch_size: int, shards: int) -> list[int]:
  """The few batch sizes sampling compiles for: shards * 2^k below `batch_size`, then `batch_size`
  (already a multiple of `shards`). E.g. (256, 1) -> [1, 2, 4, ..., 128, 256]."""
  sizes, b = [], shards
  while b < batch_size:
    sizes.append(b)
    b *= 2
  return sizes + [batch_size]


def generate_images(generator, params, mesh: Mesh, rng: jax.Array, labels: np.ndarray, *, steps: int,
                    method: str, cfg_scale: float, batch_size: int = 256, progress=None) -> np.ndarray:
  """labels [N] -> images [N, H, W, C] as numpy, generated in batches of `batch_size` (rounded to a
  multiple of the batch-sharding axes). Batch i uses fold_in(rng, i).

  The last, partial batch is padded only up to the next bucket (`batch_buckets`: the shard count
  times a power of two), so 40 images with batch_size 256 compute 64, not 256, and at most
  log2(batch_size / shards) + 1 programs are ever compiled per setting. Full batches are unchanged by
  bucketing; images of the last batch differ from those of a fully padded batch (the same
  fold_in(rng, i) key draws noise of another shape).
  """
  fn = make_generate_fn(generator, mesh, steps=steps, method=method, cfg_scale=cfg_scale)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  batch_size = max(shards, batch_size - batch_size % shards)
  buckets = batch_buckets(batch_size, shards)
  out = []
  for i, start in enumerate(range(0, len(labels), batch_size)):
    chunk = labels[start:start + batch_size]
    size = next(b for b in buckets if b >= len(chunk))
    padded = np.concatenate([chunk, np.zeros(size - len(chunk), np.int32)])
    y = to_global(padded, batch_sharding(mesh))
    imgs = fn(params, jax.random.fold_in(rng, i), y)
    out.append(to_host(imgs)[: len(chunk)])   # every process gets all images (collective)
    if progress is not None:
      progress(len(chunk))
  return np.concatenate(out, axis=0)


def evaluate_generator(generator, params, config, mesh: Mesh, cache_dir: str, log=print) -> dict:
  """FD (with its bootstrap interval) and class accuracy (adaflow.eval) of `config.eval.num_samples`
  class-balanced samples made with `config.sample` (steps, method, CFG scale) by the run's
  `generator`. Timing: `first_batch_seconds` (includes compiling the sampler, unless an earlier
  call compiled it) apart from the steady state, `images_per_second` over the later batches."""
  classifier = get_classifier(config.data, cache_dir, seed=config.eval.classifier_seed, log=log)
  n = int(config.eval.num_samples)
  labels = balanced_labels(n, generator.num_classes)
  marks = []                                         # (time, images) after each batch
  t0 = time.time()
  imgs = generate_images(generator, params, mesh, jax.random.PRNGKey(config.eval.seed), labels,
                         steps=config.sample.steps, method=config.sample.method,
                         cfg_scale=config.sample.cfg_scale, batch_size=config.eval.batch_size,
                         progress=lambda k: marks.append((time.time(), k)))
  gen_s = time.time() - t0
  first_s = marks[0][0] - t0
  steady_n, steady_s = n - marks[0][1], gen_s - first_s
  result = evaluate_samples(classifier, imgs, labels if generator.num_classes > 1 else None)
  result.update(sample_steps=int(config.sample.steps), sample_method=config.sample.method,
                cfg_scale=float(config.sample.cfg_scale), generate_seconds=gen_s, first_batch_seconds=first_s,
                images_per_second=(steady_n / steady_s) if steady_n > 0 and steady_s > 0 else n / max(gen_s, 1e-9))
  return result
