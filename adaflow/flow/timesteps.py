"""Training-time distributions over flow time t in [0, 1] (t = 0 noise, t = 1 data)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

T_SAMPLERS = ("uniform", "logit_normal")


def sample_t(rng: jax.Array, batch: int, flow_config) -> jax.Array:
  """[batch] times. `uniform`: U(0, 1). `logit_normal`: sigmoid(N(logit_mean, logit_std))
  (Esser et al. 2024), which spends more samples on intermediate times."""
  kind = flow_config.get("t_sampler", "uniform")
  if kind == "uniform":
    return jax.random.uniform(rng, (batch,))
  if kind == "logit_normal":
    z = jax.random.normal(rng, (batch,)) * flow_config.get("logit_std", 1.0) + flow_config.get("logit_mean", 0.0)
    return jax.nn.sigmoid(z)
  raise ValueError(f"flow.t_sampler must be one of {T_SAMPLERS}, got {kind!r}")


def sample_t_in_range(rng: jax.Array, batch: int, lo: float, hi: float) -> jax.Array:
  """[batch] times uniform in [lo, hi] (per-stage / per-group training slices)."""
  return lo + (hi - lo) * jax.random.uniform(rng, (batch,))
