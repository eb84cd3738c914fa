"""One rule for "which bucket of flow time is t in", shared by every method that cuts t in [0, 1].

PPFlow stages, DiffCR timestep regions and timestep-grouped sub-models each train a network (or
a ratio) on one contiguous range of t. A `TimePartition` holds the edges between those ranges:

    edges = (e_0 = 0, e_1, ..., e_K = 1)      bucket k = [e_k, e_{k+1}),  the last one also holds 1

Half-open on the right because sampling runs forward from noise (t = 0) to data (t = 1): a step
that starts on an edge lies in the bucket above it. For sampling, `segments` first inserts every
edge into the time grid as a grid point, so that each ODE step lies inside one bucket and is
integrated by that bucket's network only; no network is ever evaluated outside the range it was
trained on (Heun's second evaluation at a step's end touches at most the bucket's closed end).
Inserting an edge adds a step where the grid does not already have a point there.

How the grid meets the edges is the sampler option `sample.edges` (`EDGE_RULES`):

  insert   every edge becomes a grid point (the rule above): each network integrates only its own
           range, at the price of up to one extra step per edge that is off the uniform grid.
  snap     the requested number of steps: the grid point nearest each edge moves onto it (edges in
           the order given: network edges first), unless that point is an end of the grid or has
           already moved to another edge; an edge left between grid points is crossed (below).
  cross    the uniform grid as it is; a step that crosses edges evaluates each network where it
           owns the time: the step's start by the bucket after it, Heun's second evaluation at the
           step's end by the bucket before it (`step_runs`).

With `snap` and `cross` a step count costs the same network evaluations for every method, which is
what a quality-vs-compute comparison at equal steps needs (issue #25).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Edges closer than this to a grid point are taken to be on it: grids come from linspace and edges
# from float32 computations (SNR bisection), and a 1e-8-long extra step would waste a network call.
_ON_GRID_TOL = 1e-6
EDGE_RULES = ("insert", "snap", "cross")


@dataclasses.dataclass(frozen=True)
class TimePartition:
  """K buckets of flow time; `edges` [K + 1] strictly increasing from 0 to 1."""
  edges: tuple[float, ...]

  def __post_init__(self):
    e = np.asarray(self.edges, np.float64)
    if e.ndim != 1 or len(e) < 2 or e[0] != 0.0 or e[-1] != 1.0 or np.any(np.diff(e) <= 0):
      raise ValueError(f"time partition edges must increase strictly from 0 to 1, got {tuple(self.edges)}")
    object.__setattr__(self, "edges", tuple(float(x) for x in e))

  @classmethod
  def single(cls) -> "TimePartition":
    return cls((0.0, 1.0))

  @property
  def num_buckets(self) -> int:
    return len(self.edges) - 1

  @property
  def ranges(self) -> list[tuple[float, float]]:
    """[(lo_k, hi_k)] for each bucket."""
    return list(zip(self.edges[:-1], self.edges[1:]))

  @property
  def inner(self) -> tuple[float, ...]:
    return self.edges[1:-1]

  def index(self, t, side: str = "right"):
    """Bucket of each time: t [...] -> int32 [...] (numpy or Python float in -> numpy out; a jax
    array in -> jax array out, usable under jit). side="left": the bucket whose closed right end
    holds t, (e_k, e_{k+1}] (t = 0 in the first)."""
    if isinstance(t, jax.Array):          # tracers are jax.Arrays too
      inner = jnp.asarray(self.inner, jnp.float32)
      return jnp.clip(jnp.searchsorted(inner, t, side=side), 0, self.num_buckets - 1).astype(jnp.int32)
    # float32 on the host too, so that host decisions and traced ones agree on every input.
    inner = np.asarray(self.inner, np.float32)
    out = np.clip(np.searchsorted(inner, np.asarray(t, np.float32), side=side), 0, self.num_buckets - 1)
    return out.astype(np.int32)

  def segments(self, grid: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """[(bucket, sub_grid)]: the refined grid cut into maximal runs of steps inside one bucket, in
    order; each sub-grid shares its end point with the next one's start."""
    return [(keys[0], sub) for keys, sub in joint_segments(grid, [self])]


def _check_grid(grid) -> np.ndarray:
  """`grid` as float64 [n + 1]; ValueError unless it is increasing with at least 2 points."""
  g = np.asarray(grid, np.float64)
  if g.ndim != 1 or len(g) < 2 or np.any(np.diff(g) <= 0):
    raise ValueError(f"a time grid must be increasing with at least 2 points, got {grid}")
  return g


def _runs(keys: Sequence) -> list[tuple[int, int]]:
  """[(a, j)]: `keys` (not empty) cut into maximal runs keys[a:j] of equal keys, in order."""
  starts = [0] + [j for j in range(1, len(keys)) if keys[j] != keys[j - 1]]
  return list(zip(starts, starts[1:] + [len(keys)]))


def refine_grid(grid: np.ndarray, partitions: Sequence[TimePartition]) -> np.ndarray:
  """The grid [n + 1] (increasing) with every inner edge of `partitions` strictly inside (grid[0],
  grid[-1]) inserted as a grid point (edges within 1e-6 of a grid point are taken to be on it)."""
  grid = _check_grid(np.asarray(grid, np.float64))      # (the error shows the float64 grid)
  extra = []
  for p in partitions:
    for e in p.inner:
      if grid[0] < e < grid[-1] and np.min(np.abs(grid - e)) > _ON_GRID_TOL:
        extra.append(e)
  if not extra:
    return grid
  return np.unique(np.concatenate([grid, np.asarray(extra, np.float64)]))


def joint_segments(grid: np.ndarray, partitions: Sequence[TimePartition]
                   ) -> list[tuple[tuple[int, ...], np.ndarray]]:
  """[((bucket in partitions[0], bucket in partitions[1], ...), sub_grid)]: the grid refined with
  every partition's edges, cut into maximal runs of steps that share one bucket in each.

  A step's buckets are those of its midpoint: after refinement the whole open step lies in one
  bucket of every partition, and its start point does too (half-open buckets)."""
  fine = refine_grid(grid, partitions)
  mids = 0.5 * (fine[:-1] + fine[1:])
  keys = list(zip(*[p.index(mids).tolist() for p in partitions])) if partitions else [()] * len(mids)
  return [(tuple(int(k) for k in keys[a]), fine[a:j + 1]) for a, j in _runs(keys)]


def snap_grid(grid: np.ndarray, edges: Sequence[float]) -> np.ndarray:
  """`grid` [n + 1] (increasing) with, for each edge in order, its nearest grid point moved onto it;
  an edge whose nearest point is an end of the grid or already moved stays off the grid. Moving the
  nearest point keeps the grid increasing (the edge lies between that point's neighbours)."""
  g = _check_grid(grid).copy()
  fixed = np.zeros(len(g), bool)
  fixed[[0, -1]] = True
  for e in edges:
    if not g[0] < e < g[-1]:
      continue
    j = int(np.argmin(np.abs(g - e)))
    if abs(g[j] - e) <= _ON_GRID_TOL:
      fixed[j] = True
    elif not fixed[j]:
      g[j], fixed[j] = e, True
  return g


def edge_grid(grid: np.ndarray, partitions: Sequence[TimePartition], rule: str) -> np.ndarray:
  """The grid a sampler integrates on under `sample.edges = rule` (see the module docstring);
  `partitions` in priority order (their inner edges are snapped in that order)."""
  if rule not in EDGE_RULES:
    raise ValueError(f"sample.edges must be one of {EDGE_RULES}, got {rule!r}")
  if rule == "insert":
    return refine_grid(grid, partitions)
  if rule == "snap":
    return snap_grid(grid, [e for p in partitions for e in p.inner])
  return np.asarray(grid, np.float64)


@dataclasses.dataclass(frozen=True)
class StepRun:
  """Consecutive steps of a grid whose evaluations use the same buckets: `start` (one bucket per
  partition) evaluates at each step's start, `end` Heun's second evaluation at its end; they
  differ only for steps that cross an edge. `grid` [k + 1] shares its ends with its neighbours."""
  start: tuple[int, ...]
  end: tuple[int, ...]
  grid: np.ndarray


def step_runs(grid: np.ndarray, partitions: Sequence[TimePartition]) -> list[StepRun]:
  """The grid (as given: no edge is inserted) cut into maximal runs of steps with the same
  (start buckets, end buckets). A step lying inside one bucket (up to 1e-6 at its ends) has
  start == end, as `joint_segments` keys it; a step crossing edges starts in the bucket just
  after its start time and ends in the bucket just before its end time."""
  g = _check_grid(grid)
  a = [p.index(g[:-1] + _ON_GRID_TOL).tolist() for p in partitions]
  b = [p.index(g[1:] - _ON_GRID_TOL, side="left").tolist() for p in partitions]
  keys = [(tuple(int(x[j]) for x in a), tuple(int(x[j]) for x in b)) for j in range(len(g) - 1)]
  return [StepRun(keys[lo][0], keys[lo][1], g[lo:hi + 1]) for lo, hi in _runs(keys)]
