"""Bootstrap intervals for FD (adaflow.eval.bootstrap): coverage of the interval on Gaussian features with a known population FD, and the paired difference."""
import numpy as np
import pytest

from adaflow.eval import bootstrap
from adaflow.eval.frechet import feature_statistics, frechet_distance

F = 8


def _population(shift: float, scale: float = 1.0):
  """(mu, sigma) of a Gaussian feature distribution, and a sampler of it."""
  rng = np.random.default_rng(0)
  a = rng.normal(size=(F, F)) / np.sqrt(F)
  sigma = scale ** 2 * (a @ a.T + 0.5 * np.eye(F))
  mu = np.full(F, shift)
  return mu, sigma


def _draw(mu, sigma, n, seed):
  return np.random.default_rng(seed).multivariate_normal(mu, sigma, size=n)


def test_interval_covers_the_population_fd():
  """Nominal 95%: over 40 independent sample sets of 400, the interval holds the FD of the
  population itself in at least 80% of them (an interval from the uncorrected percentiles, or one
  that ignored the sampling noise, covers far less: the finite-sample bias alone is ~tr(S)/n)."""
  ref = _population(0.0)
  gen = _population(0.25, 1.1)
  truth = frechet_distance(*gen, *ref)
  hits, widths = 0, []
  for seed in range(40):
    iv = bootstrap.fd_interval(_draw(*gen, 400, seed=100 + seed), ref, num_resamples=100, seed=seed)
    assert iv.low <= iv.value <= iv.high
    hits += iv.contains(truth)
    widths.append(iv.high - iv.low)
  assert hits >= 32, (hits, truth)
  assert np.mean(widths) > 0.01


def test_paired_difference_separates_different_models_only():
  ref = _population(0.0)
  base = _population(0.2)
  noise = np.random.default_rng(3).normal(size=(500, F))
  chol = np.linalg.cholesky(base[1])
  a = base[0] + noise @ chol.T                       # the same noise through three "models"
  same = base[0] + np.random.default_rng(4).normal(size=(500, F)) @ chol.T   # same model, other samples
  worse = base[0] + 0.3 + noise @ (1.3 * chol).T
  assert bootstrap.fd_difference_interval(same, a, ref, num_resamples=100).contains(0.0)
  d = bootstrap.fd_difference_interval(worse, a, ref, num_resamples=100)
  assert d.low > 0, d
  with pytest.raises(ValueError, match="same shape"):
    bootstrap.fd_difference_interval(a[:10], a, ref)
  with pytest.raises(ValueError, match="resamples"):
    bootstrap.fd_interval(a, ref, num_resamples=3)


def test_fd_interval_never_goes_below_zero():
  # Samples of the reference population itself (a perfect generator, or real images): FD near its
  # finite-sample floor, where the bias shift can carry the lower end below 0; FD cannot be negative.
  ref = _population(0.0)
  lows = [bootstrap.fd_interval(_draw(*ref, 400, seed=200 + s), ref, num_resamples=100, seed=s).low for s in range(5)]
  assert min(lows) >= 0.0
  raw = bootstrap.interval_from_resamples(0.05, np.array([0.2, 0.3, 0.25, 0.4] * 5))
  assert raw.low < 0.0                                   # unclipped: the shift alone goes negative
  assert bootstrap.interval_from_resamples(0.05, np.array([0.2, 0.3, 0.25, 0.4] * 5), lower_bound=0.0).low == 0.0
