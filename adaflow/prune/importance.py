"""Importance of prunable units of a DiT: attention heads, MLP hidden channels, whole blocks.

Two proxies:
  * "magnitude": the L1 norm of a unit's weights — a head's q/k/v columns and its proj rows
    (qkv [D, 3, H, hd] + proj [H, hd, D]), a channel's fc1 column and fc2 row; a block's score is
    the sum of its heads' and channels' scores.
  * "taylor": first-order Taylor estimate of the loss change when the unit is removed (its weights
    zeroed), |sum_{w in unit} g_w * w|, g the gradient of the flow-matching loss on batches with
    t inside the group's range; averaged over batches. A block's unit is all of its parameters
    (zeroing its adaLN makes the adaLN-Zero gates 0, i.e. removes the block).

Scores are numpy: `heads[b]` [H_b], `mlp[b]` [M_b], `blocks` [depth], one per base block.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax
import numpy as np

from adaflow.models.dit import DiT

METHODS = ("magnitude", "taylor")


@dataclasses.dataclass
class Importance:
  heads: list[np.ndarray]
  mlp: list[np.ndarray]
  blocks: np.ndarray


def _unit_sums(tree: Any, model: DiT, reduce: Callable[[np.ndarray], np.ndarray]) -> Importance:
  """Sums `reduce(leaf)` per unit, for a params-shaped tree (weights, or g * w)."""
  p = jax.device_get(tree)["params"]
  hd = model.head_dim
  heads, mlp, blocks = [], [], []
  for b, spec in enumerate(model.block_specs):
    blk = p[f"block_{b}"]
    if spec.num_heads:
      d = blk["attn"]["qkv"]["kernel"].shape[0]
      qkv = reduce(np.asarray(blk["attn"]["qkv"]["kernel"])).reshape(d, 3, spec.num_heads, hd).sum((0, 1, 3))
      qkv_b = reduce(np.asarray(blk["attn"]["qkv"]["bias"])).reshape(3, spec.num_heads, hd).sum((0, 2))
      proj = reduce(np.asarray(blk["attn"]["proj"]["kernel"])).reshape(spec.num_heads, hd, -1).sum((1, 2))
      heads.append(qkv + qkv_b + proj)
    else:
      heads.append(np.zeros((0,)))
    if spec.mlp_dim:
      f1 = reduce(np.asarray(blk["mlp"]["fc1"]["kernel"])).sum(0) + reduce(np.asarray(blk["mlp"]["fc1"]["bias"]))
      f2 = reduce(np.asarray(blk["mlp"]["fc2"]["kernel"])).sum(1)
      mlp.append(f1 + f2)
    else:
      mlp.append(np.zeros((0,)))
    blocks.append(sum(float(reduce(np.asarray(v)).sum()) for v in jax.tree_util.tree_leaves(blk)))
  return Importance(heads, mlp, np.asarray(blocks, np.float64))


def magnitude(params: Any, model: DiT) -> Importance:
  """L1 weight magnitude per head / channel; a block scores the sum of its units."""
  imp = _unit_sums(params, model, np.abs)
  imp.blocks = np.asarray([h.sum() + m.sum() for h, m in zip(imp.heads, imp.mlp)], np.float64)
  return imp


def taylor(params: Any, model: DiT, loss_fn: Callable[[Any, Any], jax.Array], batches: Iterable[Any]) -> Importance:
  """|sum_unit g * w| averaged over `batches`; `loss_fn(params, batch) -> scalar` (jit-able) is
  the flow loss on the group's timesteps."""
  grad_fn = jax.jit(jax.grad(loss_fn))
  per_batch = []      # [(heads, mlp, blocks)] of each batch
  for batch in batches:
    g = grad_fn(params, batch)
    gw = jax.tree_util.tree_map(lambda a, b: np.asarray(a, np.float64) * np.asarray(b, np.float64),
                                jax.device_get(g), jax.device_get(params))
    imp = _unit_sums(gw, model, lambda v: v)
    per_batch.append(([np.abs(h) for h in imp.heads], [np.abs(m) for m in imp.mlp], np.abs(imp.blocks)))
  if not per_batch:
    raise ValueError("config.grouped.importance_batches: taylor importance needs at least one batch")
  n = len(per_batch)
  mean = lambda xs: sum(xs) / n      # 0 + x_0 + x_1 + ...: the batch order of a running sum
  heads, mlp, blocks = zip(*per_batch)
  return Importance([mean(h) for h in zip(*heads)], [mean(m) for m in zip(*mlp)], mean(blocks))
