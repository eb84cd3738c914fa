"""Mesh, logical-axis sharding rules, and multi-host helpers."""
from adaflow.parallel.mesh import batch_sharding, local_mesh, logical_shardings, make_mesh, mesh_shape, replicated
from adaflow.parallel.rules import LOGICAL_AXIS_RULES, MESH_AXES, validate_rules
