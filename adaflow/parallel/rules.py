"""Logical axis names -> mesh axes: the one table that decides how every array is sharded.

The mesh has axes ('data', 'fsdp', 'model'). Batches shard over ('data', 'fsdp'); parameters
shard their 'embed' dimension over 'fsdp' (ZeRO-3 style: gathered per layer by GSPMD) and their
head / MLP dimensions over 'model' (Megatron-style tensor parallelism). A dimension whose size does
not divide the mesh axis is replicated instead (`adaflow.parallel.mesh.logical_shardings`). Batches
are not named here: `adaflow.parallel.mesh.batch_sharding` shards their leading dimension.
"""
from __future__ import annotations

MESH_AXES = ("data", "fsdp", "model")

LOGICAL_AXIS_RULES: tuple[tuple[str, object], ...] = (
    ("embed", "fsdp"),
    ("embed_out", None),
    ("heads", "model"),
    ("mlp", "model"),
    ("cond", "model"),
    ("patch", None),
    ("freq", None),
    ("vocab", None),
)


def validate_rules(rules, mesh_axis_names=MESH_AXES) -> None:
  """Raises ValueError if a rule names a mesh axis that the mesh does not have."""
  for logical, mesh_axes in rules:
    names = mesh_axes if isinstance(mesh_axes, (tuple, list)) else (mesh_axes,)
    bad = [n for n in names if n is not None and n not in mesh_axis_names]
    if bad:
      raise ValueError(f"logical axis rule {logical!r} -> {mesh_axes!r} names mesh axes {bad} that the "
                       f"mesh {tuple(mesh_axis_names)} does not have; fix parallel.rules or mesh.*")
