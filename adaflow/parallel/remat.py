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


# String spellings of off / full: the config field is a string (ml_collections fixes a field's type
# to its default's), so `--config.model.remat=none` / `=full` must be expressible as text.
OFF_NAMES = ("none", "false", "False")
FULL_NAMES = ("true", "True")


def remat_policy(remat) -> Any:
  """`model.remat` (False | True | "none" | a REMAT_POLICIES name) -> a jax.checkpoint policy, None = off."""
  if remat is False or remat is None or remat in OFF_NAMES:
    return None
  if remat is True or remat in FULL_NAMES:
    remat = "full"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat must be 'none' or one of {sorted(REMAT_POLICIES)}, got {remat!r}")
  return REMAT_POLICIES[remat]
