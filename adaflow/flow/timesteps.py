"""Training-time distributions over flow time t in [0, 1] (t = 0 noise, t = 1 data).

One distribution per run, `flow.t_sampler`: `uniform` U(0, 1), or `logit_normal`
sigmoid(N(logit_mean, logit_std)) (Esser et al. 2024), which spends more samples on intermediate
times. Methods that train a network on one bucket of t (PPFlow stages, timestep groups, the
composed model's cells) draw from the same distribution restricted to the bucket
(`sample_t_in_range`), so that the union of their stratified draws is the run's distribution.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtri

T_SAMPLERS = ("uniform", "logit_normal")


def _check(kind: str) -> None:
  if kind not in T_SAMPLERS:
    raise ValueError(f"config.flow.t_sampler: must be one of {T_SAMPLERS}, got {kind!r}")


def sample_t(rng: jax.Array, batch: int, flow_config) -> jax.Array:
  """[batch] times from `flow.t_sampler`."""
  kind = flow_config.t_sampler
  _check(kind)
  if kind == "uniform":
    return jax.random.uniform(rng, (batch,))
  z = jax.random.normal(rng, (batch,)) * flow_config.logit_std + flow_config.logit_mean
  return jax.nn.sigmoid(z)


def t_cdf(t: float, flow_config) -> float:
  """CDF of `flow.t_sampler` at t (host float; decides static per-bucket batch shares)."""
  kind = flow_config.t_sampler
  _check(kind)
  if kind == "uniform" or t <= 0.0 or t >= 1.0:
    return float(min(max(t, 0.0), 1.0))
  z = (math.log(t) - math.log1p(-t) - flow_config.logit_mean) / flow_config.logit_std
  return 0.5 * math.erfc(-z / math.sqrt(2.0))


def sample_t_in_range(rng: jax.Array, n: int, lo: float, hi: float, flow_config) -> jax.Array:
  """[n] times from `flow.t_sampler` restricted to [lo, hi] (inverse-CDF sampling; uniform:
  U(lo, hi))."""
  kind = flow_config.t_sampler
  _check(kind)
  u = jax.random.uniform(rng, (n,), jnp.float32)
  if kind == "uniform":
    return lo + (hi - lo) * u
  c_lo, c_hi = t_cdf(lo, flow_config), t_cdf(hi, flow_config)
  q = jnp.clip(c_lo + (c_hi - c_lo) * u, 1e-7, 1 - 1e-7)
  t = jax.nn.sigmoid(flow_config.logit_mean + flow_config.logit_std * ndtri(q))
  return jnp.clip(t, lo, hi)
