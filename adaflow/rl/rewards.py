"""Pluggable quality terms for the AdaDiff reward  R = quality(x, c) - beta * steps / max_steps.

Every quality function is jittable and maps a batch to one number per input, higher = better:

  quality(images [B, H, W, C], reference [B, H, W, C], labels [B]) -> [B] float32

`reference` is the max-step sample generated from the same noise and label.

  closeness   -mean((x - x_ref)^2): agreement with the max-step sample (no extra model). 0 for the
              max-step action itself.
  classifier  log p(label | x) under the project's evaluation classifier
              (`adaflow.eval.get_classifier`), applied with its params inside jit.
  features    cosine similarity of the classifier's penultimate features of x and x_ref
              (a perceptual version of `closeness`, in [-1, 1]).
"""
from __future__ import annotations

from typing import Callable, Optional

import chex
import jax
import jax.numpy as jnp

QUALITIES = ("closeness", "classifier", "features")
QualityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def closeness(images: jax.Array, reference: jax.Array) -> jax.Array:
  """-mean squared difference per image: [B, H, W, C] x2 -> [B]."""
  chex.assert_equal_shape([images, reference])
  return -jnp.mean(jnp.square(images.astype(jnp.float32) - reference.astype(jnp.float32)),
                   axis=tuple(range(1, images.ndim)))


def class_log_prob(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """log softmax(logits)[label]: logits [B, K], labels [B] -> [B]."""
  chex.assert_rank(logits, 2)
  chex.assert_shape(labels, (logits.shape[0],))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def feature_cosine(features: jax.Array, reference_features: jax.Array) -> jax.Array:
  """Cosine similarity per row: [B, F] x2 -> [B]."""
  chex.assert_equal_shape([features, reference_features])
  a = features.astype(jnp.float32)
  b = reference_features.astype(jnp.float32)
  num = jnp.sum(a * b, axis=-1)
  den = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-8
  return num / den


def classifier_apply_fn(classifier) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
  """A jittable images [B, H, W, C] in [-1, 1] -> (logits [B, K], features [B, F]) for a
  `adaflow.eval.FeatureClassifier` (its params are closed over as constants). Images are clipped
  to [-1, 1] first, as the evaluation does with generated samples."""
  model = classifier.network
  params = jax.tree_util.tree_map(jnp.asarray, classifier.params)

  def apply(images):
    logits, feats = model.apply(params, jnp.clip(images.astype(jnp.float32), -1.0, 1.0))
    return logits, feats
  return apply


def make_quality_fn(kind: str, classifier=None) -> QualityFn:
  """The quality term named `kind` (one of QUALITIES). `classifier` (a FeatureClassifier) is
  required for 'classifier' and 'features'."""
  if kind not in QUALITIES:
    raise ValueError(f"config.selector.quality must be one of {QUALITIES}, got {kind!r}")
  if kind == "closeness":
    return lambda images, reference, labels: closeness(images, reference)
  if classifier is None:
    raise ValueError(f"selector.quality={kind!r} needs the evaluation classifier (adaflow.eval.get_classifier)")
  apply = classifier_apply_fn(classifier)
  if kind == "classifier":
    return lambda images, reference, labels: class_log_prob(apply(images)[0], labels)

  def features_quality(images, reference, labels):
    del labels
    return feature_cosine(apply(images)[1], apply(reference)[1])
  return features_quality


def step_reward(quality: jax.Array, steps: jax.Array, max_steps: float, beta: float) -> jax.Array:
  """R = quality - beta * steps / max_steps, all [B]; `steps` may be any compute cost of the chosen
  action (network evaluations, FLOPs) with `max_steps` the largest cost of the action set."""
  chex.assert_equal_shape([quality, steps])
  return quality.astype(jnp.float32) - beta * steps.astype(jnp.float32) / float(max_steps)


def all_action_quality(quality_fn: QualityFn, images_per_action: jax.Array, labels: jax.Array,
                       reference_index: Optional[int] = -1) -> jax.Array:
  """Quality of every action: images_per_action [A, B, H, W, C] -> [B, A] (the reference is the
  images of action `reference_index`, the max-step sample by default)."""
  chex.assert_rank(images_per_action, 5)
  ref = images_per_action[reference_index]
  q = jax.vmap(lambda x: quality_fn(x, ref, labels))(images_per_action)  # [A, B]
  return q.T
