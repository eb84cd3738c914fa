"""Timestep-grouped models: one (possibly pruned) DiT per contiguous range of flow time t.

Parameters are a timestep-grouped tree `{"group_0": params_0, ..., "group_{N-1}": params_{N-1}}`,
each `params_i` the unboxed `{'params': ...}` of `models[i]`; the sub-models may differ in heads,
MLP width and depth (`DiT(blocks=...)`), so each group is its own compiled program.

Dispatch:
  * sampling — `partition.segments(grid)` (`adaflow.flow.TimePartition`) inserts the group edges
    into the time grid and cuts it into runs of steps inside one group; each run is integrated with
    that group's network (`adaflow.flow.integrate` on consecutive slices of the same grid, like
    PPFlow stage switching). Group i holds [edges[i], edges[i + 1]), the last one also t = 1.
  * training on a batch of mixed t — `apply_sliced` runs group i on the static batch slice i
    (sizes fixed at trace time, times drawn inside each group's range by the objective); and
    `apply_select` evaluates an arbitrary batch of t with the right group per example (every group
    runs on the whole batch and `jnp.where` picks; N times the compute, for checks and evaluation).
`stage=` (PPFlow) and `block_fn=` (routing) keyword arguments pass straight through to each DiT.
"""
from __future__ import annotations

from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.flow.partition import TimePartition
from adaflow.models.dit import DiT


def group_key(i: int) -> str:
  return f"group_{i}"


class GroupedModel:
  """N DiT sub-models and the t edges between them (`edges` [N + 1], 0 ... 1, increasing)."""

  def __init__(self, models: Sequence[DiT], edges: Sequence[float]):
    edges = np.asarray(edges, np.float64)
    if len(edges) != len(models) + 1:
      raise ValueError(f"GroupedModel: {len(models)} models need {len(models) + 1} edges, got {len(edges)}")
    self.partition = TimePartition(tuple(edges))
    self.models = tuple(models)
    self.edges = edges

  @property
  def num_groups(self) -> int:
    return len(self.models)

  def group_of(self, t):
    """t [B] -> group index [B] (numpy or traced)."""
    return self.partition.index(t)

  def check_params(self, params: Any) -> None:
    keys = sorted(params.keys())
    want = sorted(group_key(i) for i in range(self.num_groups))
    if keys != want:
      raise ValueError(f"grouped params must have keys {want}, got {keys}")

  def apply_group(self, params: Any, i: int, x: jax.Array, t: jax.Array, y: jax.Array, **kw) -> jax.Array:
    """Group i's network on x [B, H, W, C], t [B], y [B] -> [B, H, W, C]."""
    return self.models[i].apply(params[group_key(i)], x, t, y, **kw)

  def apply_sliced(self, params: Any, x: jax.Array, t: jax.Array, y: jax.Array, sizes: Sequence[int],
                   **kw) -> jax.Array:
    """Group i on batch rows [sum(sizes[:i]), sum(sizes[:i+1])) (static sizes, sum = B).
    The caller guarantees the rows' times lie in group i. Returns [B, H, W, C]."""
    chex.assert_rank(x, 4)
    if len(sizes) != self.num_groups or sum(sizes) != x.shape[0]:
      raise ValueError(f"apply_sliced: sizes {tuple(sizes)} must have {self.num_groups} entries summing to B={x.shape[0]}")
    outs, start = [], 0
    for i, s in enumerate(sizes):
      if s:
        sl = slice(start, start + s)
        outs.append(self.apply_group(params, i, x[sl], t[sl], y[sl], **kw))
      start += s
    return jnp.concatenate(outs, axis=0)

  def apply_select(self, params: Any, x: jax.Array, t: jax.Array, y: jax.Array, **kw) -> jax.Array:
    """Each example through the group containing its t (all groups run; `where` selects)."""
    g = self.group_of(t)
    out = jnp.zeros(x.shape, jnp.float32)
    for i in range(self.num_groups):
      out = jnp.where((g == i)[:, None, None, None], self.apply_group(params, i, x, t, y, **kw), out)
    return out
