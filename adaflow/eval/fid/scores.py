"""Metrics beyond FID on the same Inception outputs: Inception Score (from the logits) and improved
precision / recall (k-NN manifolds of the pool features)."""
from __future__ import annotations

from typing import Dict

import chex
import numpy as np


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """Inception Score from the 1008-way logits [N, 1008]: mean and std over `splits` splits of
  exp(E_x KL(p(y|x) || p(y))), in float64."""
  logits = np.asarray(logits, np.float64)
  chex.assert_rank(logits, 2)
  if len(logits) < splits:
    raise ValueError(f"Inception Score with {splits} splits needs at least {splits} images; got {len(logits)}.")
  logp = logits - logits.max(axis=1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(logp, splits):
    p = np.exp(part)
    with np.errstate(divide="ignore", invalid="ignore"):
      log_py = np.log(p.mean(axis=0))
      kl = np.where(p > 0, p * (part - log_py), 0.0)   # 0 log 0 = 0
    scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Squared Euclidean distances [len(a), len(b)] in float64 accumulation of float32 matmuls."""
  d = (np.sum(a.astype(np.float64) ** 2, 1)[:, None] + np.sum(b.astype(np.float64) ** 2, 1)[None, :]
       - 2.0 * (a @ b.T).astype(np.float64))
  return np.maximum(d, 0.0)


def _knn_radii(feats: np.ndarray, k: int, chunk: int) -> np.ndarray:
  """[N] squared distance of each point to its k-th nearest other point of the same set."""
  radii = np.empty(len(feats), np.float64)
  for s in range(0, len(feats), chunk):
    d = _sq_dists(feats[s:s + chunk], feats)
    radii[s:s + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself
  return radii


def _coverage(queries: np.ndarray, support: np.ndarray, radii: np.ndarray, chunk: int) -> float:
  """Fraction of queries inside the union of balls (support_i, radius_i)."""
  inside = 0
  for s in range(0, len(queries), chunk):
    d = _sq_dists(queries[s:s + chunk], support)
    inside += int(np.sum(np.any(d <= radii[None, :], axis=1)))
  return inside / len(queries)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1000) -> Dict[str, float]:
  """Improved precision and recall (k-NN manifolds, Kynkaanniemi et al. 2019) of features
  real [N, F] and fake [M, F]: precision = share of fake inside the real manifold, recall = share
  of real inside the fake manifold; a manifold is the union of balls reaching each point's k-th
  nearest neighbour."""
  real = np.asarray(real, np.float32)
  fake = np.asarray(fake, np.float32)
  if min(len(real), len(fake)) <= k:
    raise ValueError(f"precision/recall with k={k} needs more than {k} real and fake features.")
  precision = _coverage(fake, real, _knn_radii(real, k, chunk), chunk)
  recall = _coverage(real, fake, _knn_radii(fake, k, chunk), chunk)
  return {"precision": precision, "recall": recall}
