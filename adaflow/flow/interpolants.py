"""Interpolants between Gaussian noise and data, and what the network is trained to predict.

Convention (one for the whole framework, as in SiT): flow time `t in [0, 1]`, `t = 0` is pure
noise and `t = 1` is data,

    x_t = alpha(t) * x_data + sigma(t) * noise.

`LinearInterpolant` (the default, rectified flow / SiT "Linear"): alpha = t, sigma = 1 - t; the
network predicts the velocity `u = dx_t/dt = x_data - noise` and is trained with plain MSE.
`CosineInterpolant` (VP): alpha = sin(pi t / 2), sigma = cos(pi t / 2), with velocity, noise
(epsilon) or data prediction. Samplers only ever ask an interpolant for the ODE velocity, so a
new interpolant or prediction type never touches the model or the sampler.
"""
from __future__ import annotations

import abc
import dataclasses
import math

import jax
import jax.numpy as jnp

PREDICTIONS = ("velocity", "noise", "data")


def _bcast(t: jax.Array, x: jax.Array) -> jax.Array:
  """[B] -> [B, 1, 1, 1] broadcastable against x."""
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


@dataclasses.dataclass(frozen=True)
class Interpolant(abc.ABC):
  """Base class: subclasses define alpha, sigma and their time derivatives."""
  prediction: str = "velocity"
  # How far inside [0, 1] samplers evaluate a noise- (t = 0) or data-predicting (t = 1) network,
  # whose conversion to a velocity is singular at that end (`velocity`, `eval_range`). 0.02 keeps
  # a 1e-3 network error below 1e-2 in the output with 10 Heun steps on Gaussian data (tests/test_flow.py).
  endpoint_margin: float = 0.02

  def __post_init__(self):
    if self.prediction not in PREDICTIONS:
      raise ValueError(f"flow.prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
    if not 0.0 <= self.endpoint_margin < 0.5:
      raise ValueError(f"flow.endpoint_margin must be in [0, 0.5), got {self.endpoint_margin}")

  def eval_range(self) -> tuple[float, float]:
    """(lo, hi): the times at which samplers may evaluate the network. A noise prediction gives
    no data estimate at t = 0 (alpha = 0), a data prediction no noise estimate at t = 1."""
    if self.prediction == "noise":
      return self.endpoint_margin, 1.0
    if self.prediction == "data":
      return 0.0, 1.0 - self.endpoint_margin
    return 0.0, 1.0

  @abc.abstractmethod
  def alpha(self, t):
    """Signal coefficient alpha(t)."""

  @abc.abstractmethod
  def sigma(self, t):
    """Noise coefficient sigma(t)."""

  @abc.abstractmethod
  def d_alpha(self, t):
    """d alpha / dt."""

  @abc.abstractmethod
  def d_sigma(self, t):
    """d sigma / dt."""

  def path(self, x_data: jax.Array, noise: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x_data, noise: [B, H, W, C]; t: [B] -> (x_t, regression target), both [B, H, W, C]."""
    tb = _bcast(t, x_data)
    x_t = self.alpha(tb) * x_data + self.sigma(tb) * noise
    if self.prediction == "velocity":
      target = self.d_alpha(tb) * x_data + self.d_sigma(tb) * noise
    elif self.prediction == "noise":
      target = noise
    else:
      target = x_data
    return x_t, target

  def velocity(self, prediction: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """Converts the network output at (x_t, t) into the ODE velocity dx_t/dt. t: [B]."""
    if self.prediction == "velocity":
      return prediction
    tb = _bcast(t, x_t)
    a, s, da, ds = self.alpha(tb), self.sigma(tb), self.d_alpha(tb), self.d_sigma(tb)
    if self.prediction == "noise":       # x = (x_t - s eps) / a
      x_data = (x_t - s * prediction) / jnp.maximum(a, 1e-5)
      return da * x_data + ds * prediction
    noise = (x_t - a * prediction) / jnp.maximum(s, 1e-5)   # data prediction
    return da * prediction + ds * noise


@dataclasses.dataclass(frozen=True)
class LinearInterpolant(Interpolant):
  def alpha(self, t):
    return t

  def sigma(self, t):
    return 1.0 - t

  def d_alpha(self, t):
    return jnp.ones_like(t)

  def d_sigma(self, t):
    return -jnp.ones_like(t)


@dataclasses.dataclass(frozen=True)
class CosineInterpolant(Interpolant):
  def alpha(self, t):
    return jnp.sin(0.5 * math.pi * t)

  def sigma(self, t):
    return jnp.cos(0.5 * math.pi * t)

  def d_alpha(self, t):
    return 0.5 * math.pi * jnp.cos(0.5 * math.pi * t)

  def d_sigma(self, t):
    return -0.5 * math.pi * jnp.sin(0.5 * math.pi * t)


INTERPOLANTS = {"linear": LinearInterpolant, "cosine": CosineInterpolant}


def make_interpolant(flow_config) -> Interpolant:
  name = flow_config.interpolant
  if name not in INTERPOLANTS:
    raise ValueError(f"flow.interpolant must be one of {sorted(INTERPOLANTS)}, got {name!r}")
  return INTERPOLANTS[name](prediction=flow_config.prediction,
                            endpoint_margin=float(flow_config.endpoint_margin))


def log_snr_db(t: jax.Array, interpolant: Interpolant) -> jax.Array:
  """Signal-to-noise ratio in dB, 10 log10(alpha^2 / sigma^2), used to group timesteps."""
  a, s = interpolant.alpha(t), interpolant.sigma(t)
  return 10.0 * jnp.log10(jnp.maximum(a * a, 1e-20) / jnp.maximum(s * s, 1e-20))
