"""A small per-dataset network whose penultimate features define adaflow's "FD" metric.

The network (`ClassifierNet`) is three conv blocks (Conv3x3 -> GroupNorm -> ReLU, twice, then a
2x2 average pool) with 32/64/128 channels, a global average pool giving a 128-d feature vector,
and a linear head. It accepts [B, H, W, C] images in [-1, 1], square with H a multiple of 8 in
[16, 128], C in {1, 3}. It is trained once per dataset with Adam and random shifts of up to two
pixels, deterministically from a seed, and cached with orbax under `cache_dir` together with the
real-data feature statistics (`FeatureClassifier.reference_stats`) that samples are compared with.

Its task (`TASKS`) needs no labels where the data has none: "classes" predicts the dataset's
labels; "instances" (unlabeled data) tells `EXEMPLARS` real images apart, each one its own class,
under random shifts of up to `INSTANCE_SHIFT` pixels: Exemplar-CNN's self-supervised task
(Dosovitskiy et al. 2014, arXiv 1406.6909), with the same network and recipe. Telling hundreds of
similar images apart needs their fine detail (texture, edges), which is what few-step sampling
blurs. Rotation prediction (Gidaris et al. 2018), tried first, barely learns its task on texture-like
data (the crops: accuracy ~0.3, chance 0.25) and its FD did not separate 4 from 32 sampling steps
there; the exemplar FD does, like the classifier FD (experiments/results/label_free_fd.md). Either
network is trained on real images only: never on samples, never a loss or reward of what it scores.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from adaflow import data as data_lib
from adaflow import storage
from adaflow.eval.frechet import StreamingStatistics
from adaflow.parallel.host import agree, is_writer

SIZE_RANGE = (16, 128)   # square images with a side in this range, a multiple of 8 (three 2x2 pools)
SUPPORTED_CHANNELS = (1, 3)
TASKS = ("classes", "instances")
EXEMPLARS = 512          # "instances": images told apart (the first of the seeded shuffle)
INSTANCE_SHIFT = 3       # "instances": random shifts of up to this many pixels
FEATURE_DIM = 128
EVAL_BATCH = 512
# Bump when the architecture or training recipe changes, so stale caches are not reused.
RECIPE_VERSION = 1
# Data config fields that change which images the classifier is trained and evaluated on.
KEY_FIELDS = ("name", "image_size", "channels", "data_dir", "split", "num_crops")
DEFAULT_STEPS = 300            # library default; runs train eval.classifier_steps (300 unless set)
DEFAULT_BATCH_SIZE = 64
MAX_TRAIN_EXAMPLES = 8192
HELDOUT_FRACTION = 0.1


class ClassifierNet(nn.Module):
  """Conv feature extractor + linear head; returns (logits [B, K], features [B, 128])."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = x.astype(jnp.float32)
    for width in (32, 64, 128):
      for _ in range(2):
        x = nn.Conv(width, (3, 3), padding="SAME")(x)
        x = nn.GroupNorm(num_groups=8)(x)
        x = nn.relu(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    features = x.mean(axis=(1, 2))
    logits = nn.Dense(self.num_classes)(features)
    return logits, features


def _check_images(images, image_shape=None) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C]; got shape {images.shape}.")
  _, h, w, c = images.shape
  if image_shape is not None:
    if tuple(images.shape[1:]) != tuple(image_shape):
      raise ValueError(
          f"images have shape [N, {h}, {w}, {c}] but the classifier was trained on "
          f"[N, {', '.join(map(str, image_shape))}]; evaluate with the dataset's image size.")
  elif not supported_shape((h, w, c)):
    raise ValueError(
        f"images must be square with a side in {SIZE_RANGE} that is a multiple of 8 and channels in "
        f"{SUPPORTED_CHANNELS}; got [N, {h}, {w}, {c}].")
  return images


def supported_shape(image_shape) -> bool:
  """Whether `ClassifierNet` takes images of `image_shape` (H, W, C)."""
  h, w, c = image_shape
  return h == w and h % 8 == 0 and SIZE_RANGE[0] <= h <= SIZE_RANGE[1] and c in SUPPORTED_CHANNELS


def validate_evaluation(config, info) -> None:
  """Refuses, before training, a run whose feature network could not be built for its data, where the run
  uses it before or at its end: the evaluation after training, the dense base's FD of train-then-prune, a
  step-policy reward or a perceptual loss."""
  if info is None or not (
      config.eval.at_end or (config.grouped.enabled and config.grouped.eval_stage1)
      or (config.objective == "step_selector" and config.selector.quality in ("classifier", "features"))
      or (config.objective == "dqvae" and float(config.dqvae.perceptual_weight) > 0)):
    return
  fix = ("or eval.at_end=False (and no classifier reward / perceptual loss) and measure Inception FID with "
         "`adaflow eval fid`")
  if not supported_shape(tuple(info.image_shape)):
    raise ValueError(
        f"config.eval.at_end: the built-in FD's feature network takes square images with a side in "
        f"{SIZE_RANGE}, a multiple of 8 (data.image_size={info.image_shape[0]}); set data.image_size so, {fix}")
  if info.num_examples < 2:
    raise ValueError(f"config.eval.at_end: the built-in FD compares feature statistics of at least 2 real "
                     f"images; the data has {info.num_examples}: add images, {fix}")


def _random_shift(images, key, max_shift):
  """Shifts each image by an integer offset in [-max_shift, max_shift]^2 (edge padding)."""
  if max_shift <= 0:
    return images
  b, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                   mode="edge")
  offsets = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def _learning_rate(step, total_steps, peak):
  """Linear warmup (min(50, steps // 10) steps) then cosine decay to 0; traced in `step`."""
  step = step.astype(jnp.float32)
  total = total_steps.astype(jnp.float32)
  warmup = jnp.maximum(1.0, jnp.minimum(50.0, jnp.floor(total / 10.0)))
  warm = peak * (step + 1.0) / warmup
  progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
  cosine = 0.5 * peak * (1.0 + jnp.cos(jnp.pi * progress))
  return jnp.where(step < warmup, warm, cosine)


@functools.partial(jax.jit, static_argnames=("num_classes", "batch_size", "max_shift"),
                   donate_argnames=("params", "opt_state"))
def _train_step(params, opt_state, x_all, y_all, data_key, step, total_steps, peak_lr, *,
                num_classes, batch_size, max_shift):
  """One Adam step on a random batch; compiled once per (shapes, num_classes, batch, shift)."""
  model = ClassifierNet(num_classes=num_classes)
  step_key = jax.random.fold_in(data_key, step)
  idx_key, aug_key = jax.random.split(step_key)
  idx = jax.random.randint(idx_key, (batch_size,), 0, x_all.shape[0])
  x = _random_shift(x_all[idx], aug_key, max_shift)
  y = y_all[idx]

  def loss_fn(p):
    logits, _ = model.apply(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = optax.scale_by_adam().update(grads, opt_state, params)
  lr = _learning_rate(step, total_steps, peak_lr)
  updates = jax.tree.map(lambda u: -lr * u, updates)
  return optax.apply_updates(params, updates), opt_state, loss


def train_classifier(images, labels, num_classes: int, seed: int = 0,
                     steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
                     learning_rate: float = 3e-3, max_shift: int = 2,
                     on_steps: Optional[Callable[[int], None]] = None):
  """Trains `ClassifierNet` on (images [N,H,W,C] in [-1,1], labels [N]); returns params.
  `on_steps(n)` (a progress bar's update) is called as steps finish, every 10 steps.

  Adam with a linear-warmup + cosine-decay learning rate, batches drawn uniformly with
  replacement, each image shifted by up to `max_shift` pixels (edge padding). Deterministic
  given `seed`: initialisation, batch sampling and augmentation all derive from one PRNG key.
  """
  images = _check_images(images)
  labels = np.asarray(labels)
  if labels.shape != (images.shape[0],):
    raise ValueError(f"labels must have shape [{images.shape[0]}]; got {labels.shape}.")
  if num_classes < 2:
    raise ValueError(f"num_classes must be at least 2; got {num_classes} (unlabeled data: task='instances').")
  if steps < 1 or batch_size < 1:
    raise ValueError(f"steps and batch_size must be positive; got {steps}, {batch_size}.")

  key = jax.random.PRNGKey(seed)
  init_key, data_key = jax.random.split(key)
  params = ClassifierNet(num_classes=num_classes).init(
      init_key, jnp.zeros((1,) + images.shape[1:], jnp.float32))
  opt_state = optax.scale_by_adam().init(params)
  x_all = jnp.asarray(images, jnp.float32)
  y_all = jnp.asarray(labels, jnp.int32)
  total = jnp.asarray(steps, jnp.int32)
  peak = jnp.asarray(learning_rate, jnp.float32)
  for step in range(steps):
    params, opt_state, loss = _train_step(
        params, opt_state, x_all, y_all, data_key, jnp.asarray(step, jnp.int32), total, peak,
        num_classes=num_classes, batch_size=batch_size, max_shift=max_shift)
    if on_steps is not None and ((step + 1) % 10 == 0 or step + 1 == steps):
      loss.block_until_ready()   # report finished steps, not dispatched ones
      on_steps(10 if (step + 1) % 10 == 0 else (step + 1) % 10)
  return jax.tree.map(np.asarray, jax.device_get(params))


def _bucket(n: int) -> int:
  """Padded batch size for a chunk of n <= EVAL_BATCH rows (few distinct compiled shapes)."""
  size = 8
  while size < n:
    size *= 2
  return min(size, EVAL_BATCH)


class FeatureClassifier:
  """A trained `ClassifierNet` with jitted, internally batched inference.

  Attributes:
    params: the Flax parameter pytree.
    num_classes, image_shape: what it was trained for.
    task: "classes" (it predicts the dataset's labels) or "instances" (it tells exemplars apart).
    reference_stats: (mu [F], sigma [F, F]) float64 of real-data features, or None.
    heldout_accuracy: accuracy on the held-out real images when it was trained, or None.
  """

  def __init__(self, params, num_classes: int, image_shape, reference_stats=None,
               heldout_accuracy: float | None = None, task: str = "classes"):
    self.params, self.task = params, task
    self.num_classes = int(num_classes)
    self.image_shape = tuple(int(s) for s in image_shape)
    self.reference_stats = reference_stats
    self.heldout_accuracy = heldout_accuracy
    self._model = ClassifierNet(num_classes=self.num_classes)
    self._apply = jax.jit(self._model.apply)

  @property
  def network(self) -> ClassifierNet:
    """The Flax module (apply it with `params`), for callers that jit it into their own
    programs (adaflow.rl.rewards, the DQ-VAE perceptual loss)."""
    return self._model

  def features_and_logits(self, images):
    """One pass giving (features [N, F] float32, logits [N, K] float32) as numpy, batched by 512."""
    images = _check_images(images, self.image_shape)
    n = images.shape[0]
    logits_out, feats_out = [], []
    for start in range(0, n, EVAL_BATCH):
      chunk = np.asarray(images[start:start + EVAL_BATCH], np.float32)
      m = chunk.shape[0]
      padded = _bucket(m)
      if padded != m:
        chunk = np.concatenate([chunk, np.zeros((padded - m,) + chunk.shape[1:], np.float32)])
      logits, feats = self._apply(self.params, chunk)
      logits_out.append(np.asarray(logits)[:m])
      feats_out.append(np.asarray(feats)[:m])
    if not logits_out:
      return (np.zeros((0, FEATURE_DIM), np.float32),
              np.zeros((0, self.num_classes), np.float32))
    return np.concatenate(feats_out), np.concatenate(logits_out)

  def features(self, images) -> np.ndarray:
    return self.features_and_logits(images)[0]

  def logits(self, images) -> np.ndarray:
    return self.features_and_logits(images)[1]

  def predict(self, images) -> np.ndarray:
    return np.argmax(self.logits(images), axis=-1).astype(np.int32)

  def accuracy(self, images, labels) -> float:
    return float(np.mean(self.predict(images) == np.asarray(labels)))

  def feature_statistics(self, images, batch_size: int = 4 * EVAL_BATCH):
    """(mu, sigma) float64 of this classifier's features over `images`, accumulated in batches."""
    stats = StreamingStatistics()
    for start in range(0, len(images), batch_size):
      stats.update(self.features(images[start:start + batch_size]))
    return stats.result()


# ----------------------------------------------------------------------------- caching


def _field(cfg, name):
  value = cfg.get(name) if isinstance(cfg, Mapping) else cfg[name]   # a plain dict may leave fields out
  if isinstance(value, (tuple, list)):
    return list(value)
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return str(value)


def cache_key(data_config, seed: int, steps: int, batch_size: int, task: str = "classes") -> str:
  """Hash of the data config fields that matter, the seed, the training recipe and the task."""
  desc = {f: _field(data_config, f) for f in KEY_FIELDS}
  desc.update(seed=int(seed), steps=int(steps), batch_size=int(batch_size), recipe=RECIPE_VERSION)
  if task != "classes":   # classifiers cached before tasks existed keep their key
    desc.update(task=task)
  blob = json.dumps(desc, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _checksum(tree) -> np.ndarray:
  """Order-dependent float64 fingerprint of a pytree of arrays (detects silent corruption)."""
  leaves = jax.tree.leaves(tree)
  total = 0.0
  for i, leaf in enumerate(leaves):
    leaf = np.asarray(leaf, np.float64).ravel()
    weights = np.arange(1, leaf.size + 1, dtype=np.float64) / leaf.size
    total += (i + 1) * (float(np.sum(np.abs(leaf))) + float(np.dot(leaf, weights)))
  return np.asarray(total, np.float64)


def _cache_payload(clf: FeatureClassifier, num_reference: int):
  mu, sigma = clf.reference_stats
  body = {
      "params": clf.params,
      "reference_mu": np.asarray(mu, np.float64),
      "reference_sigma": np.asarray(sigma, np.float64),
      "num_reference": np.asarray(num_reference, np.int64),
      "heldout_accuracy": np.asarray(clf.heldout_accuracy, np.float64),
      "num_classes": np.asarray(clf.num_classes, np.int64),
      "image_shape": np.asarray(clf.image_shape, np.int64),
  }
  body["checksum"] = _checksum({k: v for k, v in body.items()})
  return body


def _payload_template(num_classes: int, image_shape) -> dict:
  """Zeros in the structure, shapes and dtypes of `_cache_payload`."""
  params_shape = jax.eval_shape(
      ClassifierNet(num_classes=num_classes).init, jax.random.PRNGKey(0),
      jnp.zeros((1,) + tuple(image_shape), jnp.float32))
  return {
      "params": jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), params_shape),
      "reference_mu": np.zeros((FEATURE_DIM,), np.float64),
      "reference_sigma": np.zeros((FEATURE_DIM, FEATURE_DIM), np.float64),
      "num_reference": np.zeros((), np.int64),
      "heldout_accuracy": np.zeros((), np.float64),
      "num_classes": np.zeros((), np.int64),
      "image_shape": np.zeros((3,), np.int64),
      "checksum": np.zeros((), np.float64),
  }


def _from_payload(payload: dict, num_classes: int, image_shape, task: str) -> FeatureClassifier:
  """The classifier of a `_cache_payload`, validated (shapes, dataset shape, finite, checksum)."""
  target = _payload_template(num_classes, image_shape)
  restored = jax.tree.map(np.asarray, payload)
  if not jax.tree.all(jax.tree.map(lambda a, b: a.shape == b.shape and a.dtype == b.dtype, restored, target)):
    raise ValueError("restored arrays do not have the expected shapes/dtypes")
  if int(restored["num_classes"]) != num_classes or tuple(restored["image_shape"].tolist()) != tuple(image_shape):
    raise ValueError("restored classifier was trained for a different dataset shape")
  if not all(np.isfinite(x).all() for x in jax.tree.leaves(restored)):
    raise ValueError("restored arrays contain non-finite values")
  body = {k: v for k, v in restored.items() if k != "checksum"}
  if not np.allclose(_checksum(body), restored["checksum"], rtol=1e-9, atol=0):
    raise ValueError("checksum mismatch")
  return FeatureClassifier(
      restored["params"], num_classes, image_shape,
      reference_stats=(restored["reference_mu"], restored["reference_sigma"]),
      heldout_accuracy=float(restored["heldout_accuracy"]), task=task)


def build_classifier(images, labels, num_classes: int, seed: int = 0,
                     steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE, task: str = "classes",
                     on_steps: Optional[Callable[[int], None]] = None):
  """Trains on a (1 - HELDOUT_FRACTION) split, measures held-out accuracy, and computes the
  reference statistics over all `images`. Returns a FeatureClassifier. Task "instances" (`labels`
  unused): the first `num_exemplars(n)` images of the seeded permutation are the classes, and the
  accuracy reported is on them, mirrored (a view never trained on)."""
  images = _check_images(images)
  n = images.shape[0]
  perm = np.random.RandomState(seed).permutation(n)
  if task == "instances":
    num_classes = num_exemplars(n)
    x, y, max_shift = images[perm[:num_classes]], np.arange(num_classes), INSTANCE_SHIFT
    held_x, held_y = x[:, :, ::-1], y
  else:
    labels = np.asarray(labels, np.int32)
    held, train = np.split(perm, [max(1, int(round(n * HELDOUT_FRACTION)))])
    x, y, max_shift = images[train], labels[train], 2
    held_x, held_y = images[held], labels[held]
  params = train_classifier(x, y, num_classes, seed=seed, steps=steps, batch_size=batch_size, max_shift=max_shift,
                            on_steps=on_steps)
  clf = FeatureClassifier(params, num_classes, images.shape[1:], task=task)
  clf.heldout_accuracy = clf.accuracy(held_x, held_y)
  clf.reference_stats = clf.feature_statistics(images)
  return clf


def _chance_warning(clf: FeatureClassifier, steps: int) -> str:
  """A warning when the network did not learn its task (held-out accuracy below twice chance):
  its features then barely depend on the image, and FDs measured with it say nothing."""
  if clf.heldout_accuracy >= 2.0 / clf.num_classes:
    return ""
  return (f"; WARNING: near chance (1/{clf.num_classes}), so its FD does not rank samples: raise "
          f"eval.classifier_steps (now {steps}) or give it more images")


def num_exemplars(num_images: int) -> int:
  return min(EXEMPLARS, int(num_images))


def cache_dir(config, workdir: str) -> str:
  """Where the evaluation classifier is cached (`eval.cache_dir`, default `<workdir>/../.adaflow_cache`;
  for a gs:// workdir that is in the same bucket)."""
  return config.eval.cache_dir or os.environ.get("ADAFLOW_CACHE") or os.path.join(
      storage.parent(workdir), ".adaflow_cache")


def writable_cache_dir(config, workdir: str) -> str:
  """`cache_dir`, created and checked writable before the work whose network it will hold (one
  ValueError naming eval.cache_dir): an unwritable one failed after training and the network's."""
  path = cache_dir(config, workdir)
  storage.check_writable(path, "eval.cache_dir (or $ADAFLOW_CACHE)")
  return path


def get_classifier(data_config, cache_dir: str, seed: int = 0,
                   log: Callable[[str], Any] = print, steps: int = DEFAULT_STEPS,
                   batch_size: int = DEFAULT_BATCH_SIZE, task: str | None = None) -> FeatureClassifier:
  """Returns the dataset's evaluation network, from `cache_dir` if cached, else trained: a
  classifier of its labels, or for unlabeled data (`info.num_classes == 0`) the exemplar network
  (`task` picks one explicitly: "instances" works on labeled data too).

  Training uses `adaflow.data.load_arrays(data_config, num)` with num = all examples up to
  8192 (all 1797 for digits), of which 10% are held out for the reported accuracy. The
  reference statistics are over all `num` loaded real images. A cache entry that fails to
  restore or validate is reported through `log`, deleted and retrained.
  """

  info = data_lib.get_info(data_config)
  image_shape = tuple(int(s) for s in info.image_shape)
  task = task or ("classes" if info.num_classes else "instances")
  if task not in TASKS or (task == "classes" and not info.num_classes):
    raise ValueError(f"task={task!r}: use one of {TASKS} ('classes' needs labeled data)")
  num_train = min(int(info.num_examples), MAX_TRAIN_EXAMPLES) if info.num_examples else MAX_TRAIN_EXAMPLES
  num_classes = int(info.num_classes) if task == "classes" else num_exemplars(num_train)
  key = cache_key(data_config, seed, steps, batch_size, task)
  name = str(_field(data_config, "name") or "data")
  kind = "classifier" if task == "classes" else task
  path = storage.absolute(os.path.join(cache_dir, f"eval_{kind}_{name}_{key}"))
  what = "classifier" if task == "classes" else "exemplar network"
  log = log if is_writer() else (lambda msg: None)   # one report per job, process 0's

  if agree(storage.exists(path)):   # one decision for all processes: save/restore are collective
    try:
      with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, _payload_template(num_classes, image_shape))
      clf = _from_payload(restored, num_classes, image_shape, task)
      log(f"[eval] loaded cached {what} {path} "
          f"(held-out accuracy {clf.heldout_accuracy:.4f}{_chance_warning(clf, steps)})")
      return clf
    except Exception as e:  # pylint: disable=broad-except
      log(f"[eval] cached {what} at {path} is corrupted or unreadable "
          f"({type(e).__name__}: {str(e)[:200]}); deleting it and retraining.")
      storage.rmtree(path, ignore_errors=True)

  # Process 0 trains; the others receive its network bit for bit: training it on every process
  # cost each of them the compilation and the steps, and where training is not bit-deterministic
  # (GPUs) would give the processes different networks for one evaluation.
  payload, failure = _payload_template(num_classes, image_shape), None
  if is_writer():
    try:
      storage.check_writable(cache_dir, "eval.cache_dir (or $ADAFLOW_CACHE)")   # before the network trains, not after
      images, labels = data_lib.load_arrays(data_config, num=num_train, seed=seed)
      t0 = time.time()
      # Minutes at larger image sizes, once per dataset: say so and show the steps.
      log(f"[eval] training the {what} for '{name}' on {len(images)} images ({steps} steps; once, then "
          f"cached in {cache_dir})")
      with tqdm(total=steps, desc=f"[eval] {what}", unit="step", dynamic_ncols=True, mininterval=1.0) as bar:
        clf = build_classifier(images, labels, num_classes, seed=seed, steps=steps,
                               batch_size=batch_size, task=task, on_steps=bar.update)
      log(f"[eval] trained {what} for '{name}' on {len(images)} images in "
          f"{time.time() - t0:.1f}s: held-out accuracy {clf.heldout_accuracy:.4f}{_chance_warning(clf, steps)}")
      payload = _cache_payload(clf, num_reference=len(images))
    except Exception as e:  # pylint: disable=broad-except  # said to the others first, then raised
      failure = e
  if agree(failure is not None):   # the others would otherwise wait for the network forever
    raise failure or ValueError(f"process 0 could not train the evaluation's {what} (its error says why)")
  payload = agree(payload)
  clf = _from_payload(payload, num_classes, image_shape, task)
  storage.makedirs(cache_dir)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, payload, force=True)
    ckptr.wait_until_finished()
  log(f"[eval] saved {what} to {path}")
  return clf
