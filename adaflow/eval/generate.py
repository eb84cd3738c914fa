"""Sampling and quality evaluation of a trained generator (sharded over the mesh): the eval layer's
way to turn a generator + params into images and scores. The `objective` argument is the run's
generator (adaflow.compose.generator_for): anything with `generate(params, rng, labels, *, steps,
method, cfg_scale)` and `num_classes`."""
from __future__ import annotations

import functools
import time
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


def make_generate_fn(objective, mesh: Mesh, *, steps: int, method: str, cfg_scale: float) -> Callable:
  """jitted (params, rng, labels [B]) -> images [B, H, W, C], batch sharded over the mesh."""
  gen = functools.partial(objective.generate, steps=steps, method=method, cfg_scale=cfg_scale)
  return jax.jit(gen, out_shardings=batch_sharding(mesh))


def generate_images(objective, params, mesh: Mesh, rng: jax.Array, labels: np.ndarray, *, steps: int,
                    method: str, cfg_scale: float, batch_size: int = 256, progress=None) -> np.ndarray:
  """labels [N] -> images [N, H, W, C] as numpy, generated in batches of `batch_size` (a multiple
  of the batch-sharding axes; the last batch is padded). Batch i uses fold_in(rng, i)."""
  fn = make_generate_fn(objective, mesh, steps=steps, method=method, cfg_scale=cfg_scale)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  batch_size = max(shards, batch_size - batch_size % shards)
  out = []
  for i, start in enumerate(range(0, len(labels), batch_size)):
    chunk = labels[start:start + batch_size]
    padded = np.concatenate([chunk, np.zeros(batch_size - len(chunk), np.int32)])
    y = to_global(padded, batch_sharding(mesh))
    imgs = fn(params, jax.random.fold_in(rng, i), y)
    out.append(to_host(imgs)[: len(chunk)])   # every process gets all images (collective)
    if progress is not None:
      progress(len(chunk))
  return np.concatenate(out, axis=0)


def evaluate_generator(objective, params, config, mesh: Mesh, cache_dir: str, log=print) -> dict:
  """FD and class accuracy (adaflow.eval) of `config.eval.num_samples` class-balanced samples
  made with `config.sample` (steps, method, CFG scale)."""
  classifier = get_classifier(config.data, cache_dir, seed=config.eval.classifier_seed, log=log)
  n = int(config.eval.num_samples)
  labels = balanced_labels(n, objective.num_classes)
  t0 = time.time()
  imgs = generate_images(objective, params, mesh, jax.random.PRNGKey(config.eval.seed), labels,
                         steps=config.sample.steps, method=config.sample.method,
                         cfg_scale=config.sample.cfg_scale, batch_size=config.eval.batch_size)
  gen_s = time.time() - t0
  result = evaluate_samples(classifier, imgs, labels if objective.num_classes > 1 else None)
  result.update(sample_steps=int(config.sample.steps), sample_method=config.sample.method,
                cfg_scale=float(config.sample.cfg_scale), generate_seconds=gen_s,
                images_per_second=n / max(gen_s, 1e-9))
  return result
