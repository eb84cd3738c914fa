"""The reference the structured slicing (`adaflow.prune.slicing.slice_params`) is checked against:
removed units masked out of the unpruned parameters instead of cut out of the arrays."""
from typing import Any

import jax
import numpy as np

from adaflow.models.dit import DiT
from adaflow.prune.slicing import Structure, check_structure


def mask_params(params: Any, base: DiT, structure: Structure) -> Any:
  """The *unpruned* parameters with every removed unit's output weights zeroed (attention proj
  rows of removed heads, fc2 rows of removed channels; a dropped block also gets its adaLN zeroed,
  which makes adaLN-Zero gates 0 and the block the identity). Same output as `slice_params`
  under `sub_model`."""
  check_structure(structure, base)
  p = jax.tree_util.tree_map(np.array, jax.device_get(params))["params"]
  hd = base.head_dim
  for b, spec in enumerate(base.block_specs):
    blk = p[f"block_{b}"]
    if not (structure.heads[b] or structure.mlp[b]):
      blk["adaLN"] = jax.tree_util.tree_map(np.zeros_like, blk["adaLN"])
    if spec.num_heads:
      drop = sorted(set(range(spec.num_heads)) - set(structure.heads[b]))
      k = blk["attn"]["proj"]["kernel"].reshape(spec.num_heads, hd, -1)
      k[drop] = 0.0
      blk["attn"]["proj"]["kernel"] = k.reshape(spec.num_heads * hd, -1)
      if not structure.heads[b]:
        blk["attn"]["proj"]["bias"] = np.zeros_like(blk["attn"]["proj"]["bias"])
    if spec.mlp_dim:
      drop = sorted(set(range(spec.mlp_dim)) - set(structure.mlp[b]))
      blk["mlp"]["fc2"]["kernel"][drop] = 0.0
      if not structure.mlp[b]:
        blk["mlp"]["fc2"]["bias"] = np.zeros_like(blk["mlp"]["fc2"]["bias"])
  return {"params": p}
