"""Building a sharded TrainState: shardings derived from the parameters' logical axis names."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh

from adaflow.parallel import logical_shardings, replicated
from adaflow.train.state import TrainState, create_state


def shard_like_params(tree: Any, params: Any, param_shardings: Any, mesh: Mesh) -> Any:
  """Shardings for `tree` (e.g. an optax state): every sub-tree with the params' structure gets
  the params' shardings; every other leaf (counts, scalars) is replicated."""
  params_def = jax.tree_util.tree_structure(params)

  def is_params_like(x):
    try:
      return jax.tree_util.tree_structure(x) == params_def
    except Exception:
      return False

  def assign(x):
    if is_params_like(x) and params_def.num_leaves > 0 and not isinstance(x, jax.ShapeDtypeStruct):
      return param_shardings
    return replicated(mesh)

  return jax.tree_util.tree_map(assign, tree, is_leaf=lambda x: is_params_like(x) or isinstance(x, jax.ShapeDtypeStruct))


def state_shardings(objective, tx, mesh: Mesh, rng: jax.Array) -> tuple[Any, Any]:
  """(abstract TrainState, matching tree of NamedSharding)."""
  boxed = jax.eval_shape(objective.init, rng)
  param_sh = logical_shardings(boxed, mesh)
  params_abs = nn.meta.unbox(boxed)
  abstract = jax.eval_shape(lambda p, r: create_state(p, tx, r), params_abs, rng)
  shardings = TrainState(
      step=replicated(mesh), params=param_sh,
      opt_state=shard_like_params(abstract.opt_state, params_abs, param_sh, mesh),
      ema_params=param_sh, rng=replicated(mesh))
  return abstract, shardings


def init_state(objective, tx, mesh: Mesh, rng: jax.Array, shardings: Any, params: Any = None) -> TrainState:
  """Initialises (or wraps given `params`) directly into the sharded layout, under jit."""
  init_rng, state_rng = jax.random.split(rng)
  if params is None:
    fn = lambda r: create_state(nn.meta.unbox(objective.init(r)), tx, state_rng)
    return jax.jit(fn, out_shardings=shardings)(init_rng)
  fn = lambda p: create_state(p, tx, state_rng)
  return jax.jit(fn, out_shardings=shardings)(params)
