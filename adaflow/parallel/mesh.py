"""The device mesh ('data', 'fsdp', 'model') and shardings of parameters and batches."""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from adaflow.parallel.rules import LOGICAL_AXIS_RULES, MESH_AXES, validate_rules


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, int, int]:
  """Resolves `mesh.{data,fsdp,model}` (one of them may be -1 = all remaining devices)."""
  sizes = [int(mesh_config[a]) for a in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"at most one of mesh.data/fsdp/model may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh.* sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"mesh: {num_devices} devices are not divisible by the fixed axes product {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
                     f"{num_devices} are available; set mesh.data=-1 or change the sizes")
  return tuple(sizes)


def make_mesh(mesh_config) -> Mesh:
  """A GSPMD (auto axis types) mesh over all devices, in the order jax lists them."""
  devices = jax.devices()
  shape = mesh_shape(mesh_config, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def local_mesh() -> Mesh:
  """This process's own devices on 'data': for sampling that every process repeats in full from host
  parameters (the composed sampler), so no process needs another's devices."""
  devices = jax.local_devices()
  return Mesh(np.asarray(devices).reshape(len(devices), 1, 1), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over ('data', 'fsdp'); the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fit_spec(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes from dimensions they do not divide (such arrays are replicated there)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = axes if isinstance(axes, tuple) else ((axes,) if axes else ())
    size = math.prod(mesh.shape[n] for n in names)
    out.append(axes if names and dim % size == 0 else None)
  return P(*out)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
  """Shardings for a (boxed) Flax variable tree: logical names -> mesh axes via `rules`.

  Leaves without logical names are replicated. Returns a tree of NamedSharding matching the
  *unboxed* tree.
  """
  validate_rules(rules, mesh.axis_names)
  logical_specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  shapes = nn.meta.unbox(abstract_tree)

  def to_sharding(spec, leaf):
    spec = spec if isinstance(spec, P) else P()
    return NamedSharding(mesh, _fit_spec(spec, tuple(leaf.shape), mesh))

  return jax.tree_util.tree_map(to_sharding, mesh_specs, shapes,
                                is_leaf=lambda x: isinstance(x, P) or x is None)
