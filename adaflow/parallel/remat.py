"""Rematerialisation policies by config name (`model.remat`): what the backward pass may keep from
the forward instead of recomputing it (the memory/compute trade-off of arXiv:1604.06174)."""
from __future__ import annotations

from typing import Any

import jax

REMAT_POLICIES = {
    # keep nothing inside a block but its inputs: recompute the whole block (~1 more forward)
    "full": jax.checkpoint_policies.nothing_saveable,
    # keep the outputs of linear layers and of the attention core; recompute the elementwise work
    # (LayerNorm, modulation, GELU, gates) and the attention internals (the [B, H, N, N] logits)
    "save_dots": jax.checkpoint_policies.save_only_these_names("dense", "attention"),
    # JAX's built-in: keep every matmul result without batch dimensions (the linear layers)
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(remat) -> Any:
  """`model.remat` (False | True | a REMAT_POLICIES name) -> a jax.checkpoint policy, None = off."""
  if remat is False or remat is None:
    return None
  if remat is True:
    remat = "full"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat must be True, False or one of {sorted(REMAT_POLICIES)}, got {remat!r}")
  return REMAT_POLICIES[remat]
