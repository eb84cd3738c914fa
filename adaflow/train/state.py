"""The train state: step, params, optimizer state, EMA params and the root PRNG key."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar
  params: Any              # unboxed {'params': ...}, float32
  opt_state: Any
  ema_params: Any          # float32 copy, updated every step
  rng: jax.Array           # uint32[2] root key; per-step keys are fold_in(rng, step)


def create_state(params, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    ema_params=jax.tree_util.tree_map(jnp.copy, params), rng=rng)


def ema_update(ema, params, step: jax.Array, decay: float):
  """EMA with the usual warm-up: effective decay min(decay, (1 + step) / (10 + step))."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
  return jax.tree_util.tree_map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
