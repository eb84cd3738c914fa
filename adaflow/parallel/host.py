"""Moving arrays between the host and a mesh that may span several processes.

On one process every array is addressable and `jax.device_get` is enough. On several processes
(a TPU pod slice, or the 2-process CPU tests) an array sharded over the batch lives partly on other
hosts: `np.asarray` of it raises "Fetching value for jax.Array that spans non-addressable
devices". Everything that brings generated images, features or parameters to the host goes
through `to_host`, and everything that puts a host array onto the mesh through `to_global`, so
the same code serves one and many processes.

Conventions for several processes: every process runs the same program on the same host inputs
(labels, seeds), gets the same full host result back from `to_host`, and only process 0 writes
files (`is_writer`). Decisions that depend on the file system (is a shard already there?) are
taken by process 0 and broadcast (`agree`), so that no process skips a collective the others run.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding


def is_writer() -> bool:
  """True on the one process that writes files (process 0)."""
  return jax.process_index() == 0


def to_global(x: np.ndarray, sharding: Sharding) -> jax.Array:
  """Host array [N, ...], identical on every process -> global jax.Array with `sharding`.

  Each process fills only its addressable shards, so no process needs the others' devices."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _leaf_to_host(x: Any) -> Any:
  if not isinstance(x, jax.Array):
    return x
  if x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(jax.device_get(x))
  # tiled=True concatenates the processes' shards along the sharded axes: the global array.
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_host(tree: Any) -> Any:
  """Pytree of (possibly multi-process) jax.Arrays -> the same tree of full numpy arrays, on
  every process. Collective when some leaf spans other processes: call it on all of them."""
  return jax.tree_util.tree_map(_leaf_to_host, tree)


def agree(value: Any) -> Any:
  """Process 0's value of a host pytree (bools, numbers, arrays), on every process, bit for bit:
  32- and 64-bit leaves travel as uint32 words (the broadcast is a sum with the other processes'
  zeros, which would turn -0.0 into 0.0, and JAX without x64 would round float64 / int64)."""
  if jax.process_count() == 1:
    return value
  host = jax.tree_util.tree_map(np.asarray, value)
  wide = lambda a: a.dtype.itemsize in (4, 8)
  words = jax.tree_util.tree_map(lambda a: a.reshape(-1).view(np.uint32) if wide(a) else a, host)
  out = multihost_utils.broadcast_one_to_all(words)
  out = jax.tree_util.tree_map(lambda w, a: np.asarray(w).view(a.dtype).reshape(a.shape) if wide(a) else np.asarray(w),
                               out, host)
  return jax.tree_util.tree_map(lambda a, v: type(v)(a) if isinstance(v, (bool, int, float)) else a,
                                out, value)


def barrier(name: str) -> None:
  """All processes wait here (e.g. until process 0 has written a file the others read)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
