"""Timestep groups: N contiguous ranges of flow time t, equally wide in SNR (dB).

Flow time t in [0, 1] runs from noise (t = 0) to data (t = 1). The difficulty axis of the paper is
the signal-to-noise ratio in dB, `10 log10(alpha(t)^2 / sigma(t)^2)` (`adaflow.flow.log_snr_db`);
for the linear interpolant that is `10 log10(t^2 / (1 - t)^2)`, which is -inf at t = 0 and +inf at
t = 1. We therefore choose **equal-SNR-width groups over a clipped SNR range**: with
`snr_range_db = (lo, hi)` the N - 1 interior edges sit at the SNRs `lo + j (hi - lo) / N`,
j = 1..N-1, and the two outer groups extend to t = 0 and t = 1. For the linear interpolant with
(-20, 20) dB and N = 4 the edges are t = 0.240, 0.5, 0.760.

Group i covers `[edges[i], edges[i + 1])`; the last group also contains t = 1. Group 0 is the
noisiest (lowest SNR).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from adaflow.flow.interpolants import Interpolant, log_snr_db
from adaflow.prune.budget import check_num_groups


def t_at_snr_db(snr_db: float, interpolant: Interpolant, iters: int = 80) -> float:
  """The t in (0, 1) where `log_snr_db(t) == snr_db` (bisection; the SNR is increasing in t)."""
  lo, hi = 0.0, 1.0
  for _ in range(iters):
    mid = 0.5 * (lo + hi)
    if float(log_snr_db(jnp.asarray(mid, jnp.float32), interpolant)) < snr_db:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def group_edges(num_groups: int, interpolant: Interpolant,
                snr_range_db: Sequence[float] = (-20.0, 20.0)) -> np.ndarray:
  """[N + 1] increasing edges in t, edges[0] = 0, edges[N] = 1, interior edges equally spaced in
  SNR dB over `snr_range_db` (see module docstring)."""
  n = check_num_groups(num_groups)
  lo, hi = (float(v) for v in snr_range_db)
  if not lo < hi:
    raise ValueError(f"config.grouped.snr_range_db: must be (low, high) with low < high in dB, got {tuple(snr_range_db)}")
  inner = [t_at_snr_db(lo + j * (hi - lo) / n, interpolant) for j in range(1, n)]
  edges = np.asarray([0.0] + inner + [1.0], np.float64)
  if np.any(np.diff(edges) <= 0):
    raise ValueError(f"config.grouped.snr_range_db: {tuple(snr_range_db)} gives empty groups {edges}; widen it")
  return edges
