"""Confidence intervals for FD: a bootstrap over the generated samples' features.

FD from a few thousand samples is a noisy statistic; a difference between two models means
something only when it is larger than that noise. The interval here resamples the *generated*
features with replacement (the reference statistics are fixed: they are the same for every model
compared, so their noise cancels in a comparison).

Resampling with replacement repeats samples, which shrinks the covariance's effective rank and
biases FD upward; the raw percentile interval of a good model can lie wholly above its FD. The
interval reported is therefore the percentile interval shifted by the bootstrap's own bias
estimate (mean of the resampled FDs - FD), the "basic bias-corrected" interval.

Per resample the FD is computed against the fixed reference with `frechet.ReferenceFD` (its
square root R = sqrtm(S_r) once, then one `eigvalsh` per resample).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from adaflow.eval.frechet import ReferenceFD, feature_statistics


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate with its 95% (or `level`) bootstrap interval."""
  value: float
  low: float
  high: float

  def __str__(self) -> str:
    return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

  def contains(self, x: float) -> bool:
    return self.low <= x <= self.high


def resample_indices(n: int, num_resamples: int, seed: int = 0) -> np.ndarray:
  """[num_resamples, n] indices drawn with replacement; pass the same array to two calls to get
  a paired comparison of two sample sets of the same size."""
  if n < 2:
    raise ValueError(f"bootstrap needs at least 2 samples, got {n}")
  if num_resamples < 10:
    raise ValueError(f"bootstrap needs at least 10 resamples for a 95% interval, got {num_resamples}")
  return np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))


def interval_from_resamples(point: float, boot: np.ndarray, level: float = 0.95,
                            lower_bound: Optional[float] = None) -> Interval:
  """The bias-shifted percentile interval (module docstring) of resampled values `boot` around
  `point`, clipped at `lower_bound` where the statistic cannot go below it (FD >= 0: the shift can
  carry the lower end of a near-perfect sample set, e.g. real images, below zero)."""
  shifted = boot - (np.mean(boot) - point)
  lo, hi = np.percentile(shifted, [50 * (1 - level), 50 * (1 + level)])
  if lower_bound is not None:
    lo = max(float(lo), lower_bound)
  return Interval(float(point), float(lo), float(hi))


def resampled_fds(features: np.ndarray, ref: ReferenceFD, idx: np.ndarray) -> np.ndarray:
  """[R] FD of each resample features[idx[r]] (idx from `resample_indices`)."""
  return np.asarray([ref(*feature_statistics(features[i])) for i in idx])


def fd_interval(features, reference, *, num_resamples: int = 200, seed: int = 0, level: float = 0.95) -> Interval:
  """FD of features [N, F] against `reference` = (mu_r, sigma_r), with its bootstrap interval."""
  features = np.asarray(features, np.float64)
  ref = reference if isinstance(reference, ReferenceFD) else ReferenceFD(*reference)
  idx = resample_indices(len(features), num_resamples, seed)
  return interval_from_resamples(ref(*feature_statistics(features)), resampled_fds(features, ref, idx), level,
                                 lower_bound=0.0)


def fd_difference_interval(features_a, features_b, reference, *, num_resamples: int = 200, seed: int = 0,
                           level: float = 0.95) -> Interval:
  """FD(a) - FD(b) with a paired bootstrap interval (the same resampled rows for both sets: a and
  b must be made for the same labels and noise, row for row, so their sampling noise is shared).
  An interval that excludes 0 says the two differ beyond the sampling noise."""
  a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired FD difference needs feature sets of the same shape, got {a.shape} and {b.shape}")
  ref = reference if isinstance(reference, ReferenceFD) else ReferenceFD(*reference)
  idx = resample_indices(len(a), num_resamples, seed)
  point = ref(*feature_statistics(a)) - ref(*feature_statistics(b))
  return interval_from_resamples(point, resampled_fds(a, ref, idx) - resampled_fds(b, ref, idx), level)
