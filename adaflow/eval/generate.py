"""Quality evaluation of a trained generator: `config.eval.num_samples` samples through the one
sampling driver (adaflow.flow.driver), scored by the evaluation classifier (adaflow.eval.quality)."""
from __future__ import annotations

import time

import jax
from jax.sharding import Mesh

from adaflow.eval.classifier import get_classifier
from adaflow.eval.quality import evaluate_samples
from adaflow.flow.driver import balanced_labels, generate_images


def evaluate_generator(generator, params, config, mesh: Mesh, cache_dir: str, log=print) -> dict:
  """FD (with its bootstrap interval) and class accuracy (adaflow.eval) of `config.eval.num_samples`
  class-balanced samples made with `config.sample` (steps, method, CFG scale) by the run's
  `generator`. Timing: `first_batch_seconds` (includes compiling the sampler, unless an earlier
  call compiled it) apart from the steady state, `images_per_second` over the later batches."""
  classifier = get_classifier(config.data, cache_dir, seed=config.eval.classifier_seed, log=log,
                              steps=int(config.eval.classifier_steps))
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
  result.update(generator.sampling_record(config.sample.steps, config.sample.method, config.sample.cfg_scale))
  result.update(generate_seconds=gen_s, first_batch_seconds=first_s,
                images_per_second=(steady_n / steady_s) if steady_n > 0 and steady_s > 0 else n / max(gen_s, 1e-9))
  return result
