"""Structured slicing: a `Structure` (kept heads / MLP channels / blocks) applied to the base
model's parameters gives *real smaller arrays* for `DiT(blocks=...)`, never masks.

Parameter layout of a DiT block (see `adaflow.models.dit`), H heads of width hd, D hidden, M MLP:
  attn/qkv/kernel [D, 3*H*hd] laid out (q | k | v), each head-major; attn/qkv/bias [3*H*hd]
  attn/proj/kernel [H*hd, D]; mlp/fc1/kernel [D, M], fc1/bias [M]; mlp/fc2/kernel [M, D]
A block keeping no heads and no MLP channels is dropped (its adaLN is removed too); the kept blocks
are renumbered block_0, block_1, ... in order. Everything outside the blocks (embedders, heads,
t/y/level embeddings, final layer) is copied unchanged, so PPFlow stage parameters survive; a
routed DiT's `router_{b}` [D, 1] follows its block (renumbered) and `rho` [depth, R] keeps the
rows of the kept blocks, so DiffCR routers survive too.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

import jax
import numpy as np

from adaflow.models.dit import BlockSpec, DiT


@dataclasses.dataclass(frozen=True)
class Structure:
  """Kept units per *base* block: `heads[b]` and `mlp[b]` are sorted index tuples into block b's
  heads / MLP channels. A block with both empty is dropped."""
  heads: tuple[tuple[int, ...], ...]
  mlp: tuple[tuple[int, ...], ...]

  def __post_init__(self):
    if len(self.heads) != len(self.mlp):
      raise ValueError(f"Structure: {len(self.heads)} head lists but {len(self.mlp)} MLP lists")

  @property
  def depth(self) -> int:
    return len(self.heads)

  def counts(self) -> list[tuple[int, int]]:
    """[(heads kept, MLP channels kept)] per base block."""
    return [(len(h), len(m)) for h, m in zip(self.heads, self.mlp)]

  def kept_blocks(self) -> list[int]:
    return [b for b, (h, m) in enumerate(self.counts()) if h or m]

  def block_specs(self) -> tuple[BlockSpec, ...]:
    """BlockSpecs of the sliced sub-model (dropped blocks omitted)."""
    return tuple(BlockSpec(len(self.heads[b]), len(self.mlp[b])) for b in self.kept_blocks())

  def key(self) -> str:
    """Canonical string (for de-duplication in the memory bank)."""
    return json.dumps(self.to_json(), sort_keys=True)

  def to_json(self) -> dict:
    return {"heads": [list(h) for h in self.heads], "mlp": [list(m) for m in self.mlp]}

  @staticmethod
  def from_json(d: dict) -> "Structure":
    return Structure(tuple(tuple(int(i) for i in h) for h in d["heads"]),
                     tuple(tuple(int(i) for i in m) for m in d["mlp"]))

  @staticmethod
  def full(model: DiT) -> "Structure":
    specs = model.block_specs
    return Structure(tuple(tuple(range(s.num_heads)) for s in specs),
                     tuple(tuple(range(s.mlp_dim)) for s in specs))


def check_structure(structure: Structure, base: DiT) -> None:
  """ValueError unless every index is valid for `base` and at least one block is kept."""
  specs = base.block_specs
  if structure.depth != len(specs):
    raise ValueError(f"structure has {structure.depth} blocks, the base model {len(specs)}")
  for b, (h, m) in enumerate(zip(structure.heads, structure.mlp)):
    for name, idx, size in (("heads", h, specs[b].num_heads), ("mlp", m, specs[b].mlp_dim)):
      if list(idx) != sorted(set(idx)) or (idx and (idx[0] < 0 or idx[-1] >= size)):
        raise ValueError(f"structure block {b} {name}: indices must be sorted, unique, in [0, {size}), got {idx}")
  if not structure.kept_blocks():
    raise ValueError("structure keeps no block at all")


def sub_model(base: DiT, structure: Structure) -> DiT:
  """The DiT module of the sliced sub-model (same head_dim as the base)."""
  check_structure(structure, base)
  return base.clone(blocks=structure.block_specs(), depth=len(structure.kept_blocks()), parent=None)


def _slice_block(p: dict, heads: Sequence[int], mlp: Sequence[int], hd: int) -> dict:
  out = {"adaLN": p["adaLN"]}
  if heads:
    qkv_k, qkv_b = np.asarray(p["attn"]["qkv"]["kernel"]), np.asarray(p["attn"]["qkv"]["bias"])
    d = qkv_k.shape[0]
    h_all = qkv_k.shape[1] // (3 * hd)
    idx = np.asarray(heads)
    k = qkv_k.reshape(d, 3, h_all, hd)[:, :, idx].reshape(d, 3 * len(idx) * hd)
    bias = qkv_b.reshape(3, h_all, hd)[:, idx].reshape(3 * len(idx) * hd)
    proj_k = np.asarray(p["attn"]["proj"]["kernel"])
    proj_k = proj_k.reshape(h_all, hd, -1)[idx].reshape(len(idx) * hd, -1)
    out["attn"] = {"qkv": {"kernel": k, "bias": bias},
                   "proj": {"kernel": proj_k, "bias": np.asarray(p["attn"]["proj"]["bias"])}}
  if mlp:
    idx = np.asarray(mlp)
    f1, f2 = p["mlp"]["fc1"], p["mlp"]["fc2"]
    out["mlp"] = {"fc1": {"kernel": np.asarray(f1["kernel"])[:, idx], "bias": np.asarray(f1["bias"])[idx]},
                  "fc2": {"kernel": np.asarray(f2["kernel"])[idx], "bias": np.asarray(f2["bias"])}}
  return out


def slice_params(params: Any, base: DiT, structure: Structure) -> Any:
  """Unboxed `{'params': ...}` of `base` -> `{'params': ...}` of `sub_model(base, structure)`
  (host numpy arrays; shapes exactly those the sub-model initialises)."""
  check_structure(structure, base)
  p = jax.device_get(params)["params"]
  out = {k: v for k, v in p.items() if not (k.startswith("block_") or k.startswith("router_") or k == "rho")}
  kept = structure.kept_blocks()
  for new_i, b in enumerate(kept):
    out[f"block_{new_i}"] = _slice_block(p[f"block_{b}"], structure.heads[b], structure.mlp[b], base.head_dim)
    if f"router_{b}" in p:            # RoutedDiT: the router acts on the residual width (unchanged)
      out[f"router_{new_i}"] = p[f"router_{b}"]
  if "rho" in p:                      # RoutedDiT ratios [depth, R]: rows of the kept blocks
    out["rho"] = np.asarray(p["rho"])[np.asarray(kept, np.int64)]
  return {"params": jax.tree_util.tree_map(np.asarray, out)}
