"""Mesh, logical-axis sharding rules, and multi-host helpers."""
from adaflow.parallel.mesh import batch_sharding, local_mesh, logical_shardings, make_mesh, replicated
