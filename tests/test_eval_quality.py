"""Tests for adaflow.eval: Frechet distance, streaming statistics, classifier, caching, FD."""
import os

import chex
import jax
import numpy as np
import pytest
import scipy.linalg

from adaflow import eval as ev
from adaflow.eval import classifier as clf_lib
from adaflow.eval.frechet import ReferenceFD

DIGITS = {"name": "digits", "image_size": 16, "channels": 1, "data_dir": None, "split": "train"}
TEST_STEPS = 200  # enough for >= 97% held-out on digits 16x16, and fast


def _spd(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T + d * np.eye(d)


# ----------------------------------------------------------------------------- Frechet distance


def test_frechet_identical_is_zero():
  rng = np.random.default_rng(0)
  mu, sigma = rng.normal(size=6), _spd(rng, 6)
  assert abs(ev.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_means_only():
  rng = np.random.default_rng(1)
  mu1, mu2, sigma = rng.normal(size=5), rng.normal(size=5), _spd(rng, 5)
  expected = float(np.sum((mu1 - mu2) ** 2))
  np.testing.assert_allclose(ev.frechet_distance(mu1, sigma, mu2, sigma), expected, rtol=1e-7)


def test_frechet_diagonal_covariances():
  rng = np.random.default_rng(2)
  a, b = rng.uniform(0.1, 3.0, size=7), rng.uniform(0.1, 3.0, size=7)
  mu1, mu2 = rng.normal(size=7), rng.normal(size=7)
  expected = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
  got = ev.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  assert isinstance(got, float)
  np.testing.assert_allclose(got, expected, rtol=1e-7)


def test_frechet_singular_covariance_is_finite():
  # Rank-deficient covariances (fewer samples than dims): rounding's negative eigenvalues are clipped.
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
  fd = ev.frechet_distance(*ev.feature_statistics(x), *ev.feature_statistics(y))
  assert np.isfinite(fd) and fd > 0


def _sqrtm_formula(mu1, sigma1, mu2, sigma2):
  """The standard FID tools' computation (pytorch-fid, torch-fidelity): scipy.linalg.sqrtm of
  sigma1 @ sigma2, its real part."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  covmean = (covmean[0] if isinstance(covmean, tuple) else covmean).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


@pytest.mark.parametrize("num, dim, rtol", [(400, 32, 1e-11), (12, 48, 1e-6)])
def test_frechet_equals_the_standard_tools_sqrtm_formula(num, dim, rtol):
  """frechet_distance (two symmetric eigen-decompositions) against scipy.linalg.sqrtm: the same
  number up to rounding with more samples than dimensions; close with fewer (rank-deficient
  covariances, where sqrtm's complex rounding parts are discarded by the tools); and ReferenceFD,
  which keeps the reference's root for many calls, gives frechet_distance's number exactly."""
  rng = np.random.default_rng(7)
  mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
  x = np.maximum(rng.normal(size=(num, dim)) @ mix, 0.0)
  y = np.maximum(rng.normal(size=(num, dim)) @ mix * 1.2 + 0.1, 0.0)
  a, b = ev.feature_statistics(x), ev.feature_statistics(y)
  got = ev.frechet_distance(*a, *b)
  np.testing.assert_allclose(got, _sqrtm_formula(*a, *b), rtol=rtol)
  assert ReferenceFD(*b)(*a) == got


def test_set_against_itself_is_near_zero():
  feats = np.random.default_rng(4).normal(size=(500, 16)) * 2.0 + 3.0
  mu, sigma = ev.feature_statistics(feats)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False))
  assert abs(ev.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_streaming_and_sharded_stats_equal_one_shot():
  feats = np.random.default_rng(5).normal(size=(1000, 12)).astype(np.float32) * 5.0 + 40.0
  mu, sigma = ev.feature_statistics(feats)
  stream = ev.StreamingStatistics()
  for start in range(0, 1000, 77):
    stream.update(feats[start:start + 77])
  np.testing.assert_allclose(stream.result()[0], mu, rtol=1e-10)
  np.testing.assert_allclose(stream.result()[1], sigma, rtol=1e-9, atol=1e-9)
  shards = [ev.StreamingStatistics().update(s) for s in np.array_split(feats, 3)]
  merged = ev.StreamingStatistics()
  for s in shards:
    merged.merge(s)
  assert merged.count == 1000
  np.testing.assert_allclose(merged.result()[0], mu, rtol=1e-10)
  np.testing.assert_allclose(merged.result()[1], sigma, rtol=1e-9, atol=1e-9)


def test_bad_shapes_raise():
  rng = np.random.default_rng(6)
  mu, sigma = rng.normal(size=4), _spd(rng, 4)
  with pytest.raises(ValueError):
    ev.frechet_distance(mu, sigma, mu[:3], sigma)
  with pytest.raises(ValueError):
    ev.frechet_distance(mu, sigma, mu, sigma[:3, :3])
  with pytest.raises(ValueError):
    ev.frechet_distance(mu[None], sigma, mu[None], sigma)
  with pytest.raises(ValueError):
    ev.feature_statistics(rng.normal(size=(10,)))
  with pytest.raises(ValueError):
    ev.feature_statistics(rng.normal(size=(1, 4)))
  stream = ev.StreamingStatistics().update(rng.normal(size=(5, 4)))
  with pytest.raises(ValueError):
    stream.update(rng.normal(size=(5, 3)))
  with pytest.raises(ValueError):
    ev.StreamingStatistics().update(rng.normal(size=(1, 4))).result()
  with pytest.raises(ValueError):
    ev.train_classifier(np.zeros((8, 16, 12, 1)), np.zeros(8, np.int32), 10)


# ----------------------------------------------------------------------------- classifier


def test_training_is_deterministic():
  from adaflow import data
  images, labels = data.load_arrays(DIGITS, num=256, seed=0)
  p1 = ev.train_classifier(images, labels, 10, seed=3, steps=5, batch_size=16)
  p2 = ev.train_classifier(images, labels, 10, seed=3, steps=5, batch_size=16)
  p3 = ev.train_classifier(images, labels, 10, seed=4, steps=5, batch_size=16)
  chex.assert_trees_all_equal(p1, p2)
  assert not all(np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(p1), jax.tree.leaves(p3)))


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
  # TEST_STEPS runs of one small train step: running, not compiling, is its cost, so it takes the
  # optimized build (conftest's -O0 suits programs compiled once and run little): ~2/3 of the time.
  logs = []
  default = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    clf = ev.get_classifier(DIGITS, str(tmp_path_factory.mktemp("eval_cache")), seed=0,
                            log=logs.append, steps=TEST_STEPS)
  finally:
    jax.config.update("jax_disable_most_optimizations", default)
  return clf, logs


def test_digits_classifier_accuracy_and_outputs(digits_classifier):
  clf, logs = digits_classifier
  print("\n".join(logs))
  assert any("held-out accuracy" in line for line in logs)
  assert clf.heldout_accuracy >= 0.97, clf.heldout_accuracy
  mu, sigma = clf.reference_stats
  assert mu.shape == (128,) and sigma.shape == (128, 128)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  from adaflow import data
  images, labels = data.load_arrays(DIGITS, num=600, seed=5)  # > one 512 batch
  feats, logits = clf.features(images), clf.logits(images)
  chex.assert_shape(feats, (600, 128))
  chex.assert_shape(logits, (600, 10))
  np.testing.assert_array_equal(clf.predict(images), np.argmax(logits, -1))
  # Batching is invisible: a sub-batch gives the same features as inside the big batch.
  np.testing.assert_allclose(clf.features(images[517:530]), feats[517:530], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError):
    clf.features(np.zeros((2, 32, 32, 1), np.float32))


def test_fd_noise_much_larger_than_real(digits_classifier):
  clf, _ = digits_classifier
  from adaflow import data
  floor = ev.real_vs_real_fd(clf, DIGITS, num=500)
  real_images, real_labels = data.load_arrays(DIGITS, num=500, seed=7)
  real = ev.evaluate_samples(clf, real_images, real_labels)
  noise = ev.evaluate_samples(
      clf, np.random.default_rng(0).uniform(-3, 3, size=(500, 16, 16, 1)).astype(np.float32),
      real_labels)
  print(f"real-vs-real floor {floor:.4f}  real {real}  noise {noise}")
  assert real["num"] == 500 and real["class_acc"] >= 0.97
  assert noise["class_acc"] < 0.5
  assert ev.evaluate_samples(clf, real_images)["class_acc"] is None
  assert noise["fd"] > 20 * max(real["fd"], floor)
  with pytest.raises(ValueError):
    ev.evaluate_samples(clf, real_images, real_labels[:10])
  with pytest.raises(ValueError):
    ev.evaluate_samples(clf, real_images[:, :8])
  with pytest.raises(ValueError):
    ev.real_vs_real_fd(clf, DIGITS, num=1000)  # 2000 > 1797 distinct images


def test_corrupted_cache_is_detected_and_retrained(tmp_path, capsys):
  cache = str(tmp_path)
  logs = []
  first = ev.get_classifier(DIGITS, cache, seed=1, log=logs.append, steps=5)
  # Minutes at larger sizes: a line before the training and a bar of its steps (stderr).
  assert logs[0].startswith("[eval] training the classifier for 'digits' on ") and "5 steps" in logs[0], logs
  assert "[eval] classifier: 100%" in capsys.readouterr().err
  entries = [e for e in os.listdir(cache) if e.startswith("eval_classifier_digits_")]
  assert len(entries) == 1
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(cache, entries[0]))
           for f in fs]
  assert files
  for path in files:
    with open(path, "wb") as f:
      f.write(b"\x00garbage\xff" * 37)
  logs.clear()
  second = ev.get_classifier(DIGITS, cache, seed=1, log=logs.append, steps=5)
  text = "\n".join(logs)
  assert "corrupted" in text and "trained classifier" in text, text
  assert ("near chance" in text) == (first.heldout_accuracy < 0.2), text    # 10 classes: below 2x chance
  chex.assert_trees_all_equal(first.params, second.params)  # retrained deterministically
  logs.clear()
  third = ev.get_classifier(DIGITS, cache, seed=1, log=logs.append, steps=5)
  assert any("loaded cached" in line for line in logs), logs
  chex.assert_trees_all_equal(first.params, third.params)
  np.testing.assert_array_equal(third.reference_stats[1], first.reference_stats[1])
  assert third.heldout_accuracy == first.heldout_accuracy
  # Silent corruption: flip bytes in the middle of the largest stored data file.
  largest = max((os.path.join(r, f) for r, _, fs in os.walk(os.path.join(cache, entries[0]))
                 for f in fs), key=os.path.getsize)
  blob = bytearray(open(largest, "rb").read())
  for i in range(len(blob) // 2, len(blob) // 2 + 16):
    blob[i] ^= 0x5A
  with open(largest, "wb") as f:
    f.write(bytes(blob))
  logs.clear()
  fourth = ev.get_classifier(DIGITS, cache, seed=1, log=logs.append, steps=5)
  assert any("corrupted" in line for line in logs), logs
  chex.assert_trees_all_equal(first.params, fourth.params)


def test_cache_key_depends_on_fields_that_matter():
  base = clf_lib.cache_key(DIGITS, seed=0, steps=10, batch_size=8)
  assert base == clf_lib.cache_key(dict(DIGITS, random_flip=True), seed=0, steps=10,
                                   batch_size=8)
  assert base != clf_lib.cache_key(dict(DIGITS, image_size=32), seed=0, steps=10, batch_size=8)
  assert base != clf_lib.cache_key(DIGITS, seed=1, steps=10, batch_size=8)


def test_frechet_distance_one_dimensional():
  """1-D case: (m1-m2)^2 + (s1-s2)^2 with s the standard deviations."""
  from adaflow.eval.frechet import frechet_distance
  d = frechet_distance(np.array([0.0]), np.array([[4.0]]), np.array([1.0]), np.array([[1.0]]))
  assert abs(d - 2.0) < 1e-9


def test_evaluation_trains_its_feature_network_for_eval_classifier_steps(monkeypatch):
  """`eval.classifier_steps` reaches the network the evaluation asks for (and so its cache key)."""
  from adaflow.eval import generate as generate_lib
  from conftest import tiny_config

  class Asked(Exception):
    pass

  def fake_get_classifier(data_config, cache_dir, **kw):
    raise Asked(kw["steps"], kw["seed"])
  monkeypatch.setattr(generate_lib, "get_classifier", fake_get_classifier)
  config = tiny_config(**{"eval.classifier_steps": 7, "eval.classifier_seed": 3})
  with pytest.raises(Asked) as asked:
    generate_lib.evaluate_generator(None, None, config, None, cache_dir="unused")
  assert asked.value.args == (7, 3)
  assert clf_lib.cache_key(DIGITS, 0, 7, 64) != clf_lib.cache_key(DIGITS, 0, 300, 64)


def test_a_feature_network_that_did_not_learn_is_warned_about():
  """Held-out accuracy below twice chance: its FD says nothing, and the log says so and how to fix it."""
  learned = clf_lib.FeatureClassifier(None, 20, (16, 16, 3), heldout_accuracy=0.5, task="instances")
  chance = clf_lib.FeatureClassifier(None, 20, (16, 16, 3), heldout_accuracy=0.05, task="instances")
  assert clf_lib._chance_warning(learned, 300) == ""   # pylint: disable=protected-access
  warning = clf_lib._chance_warning(chance, 20)         # pylint: disable=protected-access
  assert "near chance (1/20)" in warning and "eval.classifier_steps (now 20)" in warning
