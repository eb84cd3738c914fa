"""The networks of a composed model: one DiT definition (`adaflow.models.dit.DiT`, or its routed
subclass `RoutedDiT`) with the PPFlow stage groupings, cloned once per timestep group with that
group's pruned BlockSpecs. No block code lives here.

Parameters: one group -> the model's unboxed `{'params': ...}`; several groups ->
`{'group_0': {'params': ...}, ...}` (the layout of `adaflow.models.grouped`).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.compose.spec import ComposeSpec
from adaflow.models.dit import DiT, dit_from_config
from adaflow.models.grouped import group_key
from adaflow.models.routing.routed_dit import RoutedDiT


def base_model(config, info, spec: ComposeSpec) -> DiT:
  """The full-size network: DiT with the spec's stage groupings, routed when routing is on."""
  m = config.model.copy_and_resolve_references()
  if spec.schedule is not None:
    m.stage_groups = tuple(spec.schedule.groups)
  dit = dit_from_config(m, info.image_shape, info.num_classes)
  return dit if spec.routing is None else RoutedDiT.from_dit(dit, spec.routing)


def group_models(base: DiT, spec: ComposeSpec) -> tuple[DiT, ...]:
  """One network per timestep group (the base itself when grouping is off)."""
  if spec.blocks_per_group is None:
    return (base,)
  return tuple(base.clone(blocks=tuple(b), depth=len(b), parent=None) for b in spec.blocks_per_group)


def dummy_inputs(info, batch: int = 1):
  h, w, c = info.image_shape
  return (jnp.zeros((batch, h, w, c), jnp.float32), jnp.zeros((batch,), jnp.float32),
          jnp.zeros((batch,), jnp.int32))


def init_model(model: DiT, rng: jax.Array, info):
  """Boxed variables of every stage (and routers / rho when routed)."""
  kw = {"mode": "train"} if isinstance(model, RoutedDiT) else {}

  def all_stages(module, x, t, y):
    return [module(x, t, y, stage=s, **kw) for s in range(module.num_stages)]
  return model.init(rng, *dummy_inputs(info), method=all_stages)


def init_params(models: Sequence[DiT], rng: jax.Array, info, grouped: bool):
  """Boxed variables of all groups in the composed layout."""
  if not grouped:
    return init_model(models[0], rng, info)
  return {group_key(i): init_model(m, jax.random.fold_in(rng, i), info) for i, m in enumerate(models)}


def expected_shapes(models: Sequence[DiT], info, grouped: bool):
  """ShapeDtypeStruct tree of the composed params (no compilation: `jax.eval_shape`)."""
  return jax.eval_shape(lambda r: nn.meta.unbox(init_params(models, r, info, grouped)), jax.random.PRNGKey(0))


def _flat(tree) -> dict:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)] = tuple(leaf.shape) if hasattr(leaf, "shape") else tuple(np.shape(leaf))
  return out


def check_params(params: Any, models: Sequence[DiT], info, spec: ComposeSpec) -> None:
  """ValueError naming what does not match: group keys, missing/extra leaves (e.g. no routers for a
  routed composition, no stage embeddings for PPFlow), shapes (e.g. a group's pruned structure)."""
  grouped = spec.blocks_per_group is not None
  if not hasattr(params, "keys"):
    raise ValueError(f"composed params must be a dict, got {type(params).__name__}")
  keys = sorted(params.keys())
  if grouped:
    want = sorted(group_key(i) for i in range(spec.num_groups))
    if keys != want:
      raise ValueError(f"grouped composed params must have keys {want} (one per compose.group_blocks entry), got {keys}")
  elif keys != ["params"]:
    raise ValueError(f"composed params (compose.grouped off) must be {{'params': ...}}, got keys {keys}"
                     + ("; these are grouped params: turn compose.grouped on" if any(k.startswith("group_") for k in keys) else ""))
  want, got = _flat(expected_shapes(models, info, grouped)), _flat(params)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  bad = sorted(k for k in set(want) & set(got) if want[k] != got[k])
  if missing or extra or bad:
    hints = []
    if any("router_" in k or k.endswith("/rho") for k in missing):
      hints.append("routers/rho missing: the params are not from a routed model (compose.routing)")
    if any("embed_" in k or "level_embed" in k for k in missing + extra):
      hints.append("stage embeddings differ: compose.ppflow / compose.stages must match the trained model")
    msg = "; ".join(filter(None, [
        f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}" if missing else "",
        f"unexpected {extra[:4]}{' ...' if len(extra) > 4 else ''}" if extra else "",
        "shape mismatch " + ", ".join(f"{k}: {got[k]} vs {want[k]}" for k in bad[:4]) if bad else ""]))
    raise ValueError(f"composed params do not match the composed model ({spec.name()}): {msg}"
                     + (f" ({'; '.join(hints)})" if hints else ""))


def group_params(params: Any, spec: ComposeSpec, g: int) -> Any:
  return params[group_key(g)] if spec.blocks_per_group is not None else params


def finest_stage_view(params: Any, stage: int) -> Any:
  """Unboxed params of a (routed, multi-stage) DiT -> params of the one-stage plain DiT that computes
  the same function as stage `stage` with every token kept (routing's dense mode): embed/head of that
  stage become embed_0/head_0, the stage's level embedding is folded into every label-embedding row
  (c = t_embed + y_embed[y] + level[stage]), routers and rho are dropped. Used to prune a composed
  model with the dense pruning pass (adaflow.prune)."""
  p = jax.device_get(params)["params"]
  out = {}
  for k, v in p.items():
    if k.startswith("router_") or k == "rho" or k == "level_embed" or k.startswith("embed_") or k.startswith("head_"):
      continue
    out[k] = v
  out["embed_0"] = p[f"embed_{stage}"]
  out["head_0"] = p[f"head_{stage}"]
  y = np.asarray(p["y_embed"])
  if "level_embed" in p:
    y = y + np.asarray(p["level_embed"])[stage][None]
  out["y_embed"] = y
  return {"params": jax.tree_util.tree_map(np.asarray, out)}
