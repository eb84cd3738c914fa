"""ODE samplers: integrate dx/dt = v(x, t) from noise (t = 0) to data (t = 1).

A *velocity function* maps (x [B, H, W, C], t [B]) -> v [B, H, W, C]. The time grid is a static
numpy array, so the number of steps is part of the compiled program; methods that change the
network per segment of time (PPFlow stages, timestep groups) integrate each segment with its own
velocity function by calling `integrate` on consecutive slices of the same grid.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
METHODS = ("euler", "heun")


def time_grid(num_steps: int, t0: float = 0.0, t1: float = 1.0) -> np.ndarray:
  """Uniform grid of num_steps + 1 times from t0 to t1."""
  if num_steps < 1:
    raise ValueError(f"sample.steps must be >= 1, got {num_steps}")
  return np.linspace(t0, t1, num_steps + 1, dtype=np.float64)


def integrate(velocity_fn: VelocityFn, x: jax.Array, grid: np.ndarray, method: str = "euler") -> jax.Array:
  """Integrates from grid[0] to grid[-1]. x: [B, H, W, C]. Uses `lax.scan` over the steps so the
  compiled program stays small for any number of steps."""
  if method not in METHODS:
    raise ValueError(f"sample.method must be one of {METHODS}, got {method!r}")
  grid = np.asarray(grid, np.float32)
  if len(grid) < 2:
    return x

  def body(x, ts):
    t, t_next = ts[0], ts[1]
    b = x.shape[0]
    tb = jnp.full((b,), 1.0, jnp.float32) * t
    v = velocity_fn(x, tb)
    dt = t_next - t
    if method == "euler":
      return x + dt * v, None
    v_next = velocity_fn(x + dt * v, jnp.full((b,), 1.0, jnp.float32) * t_next)
    return x + dt * 0.5 * (v + v_next), None

  pairs = jnp.asarray(np.stack([grid[:-1], grid[1:]], axis=1))
  x, _ = jax.lax.scan(body, x, pairs)
  return x


def guided(model_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], y: jax.Array,
           null_label: int, scale: float) -> VelocityFn:
  """Classifier-free guidance: v = v_uncond + scale * (v_cond - v_uncond).

  model_fn(x, t, y) -> velocity. `scale == 1` is plain conditional sampling (one network call);
  otherwise conditional and unconditional halves run as one batch of 2B.
  """
  if scale == 1.0:
    return lambda x, t: model_fn(x, t, y)

  def fn(x, t):
    b = x.shape[0]
    y_all = jnp.concatenate([y, jnp.full_like(y, null_label)])
    v = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), y_all)
    v_c, v_u = v[:b], v[b:]
    return v_u + scale * (v_c - v_u)
  return fn


def sample(velocity_fn: VelocityFn, noise: jax.Array, num_steps: int, method: str = "euler",
           grid: Optional[np.ndarray] = None) -> jax.Array:
  """Noise [B, H, W, C] -> samples [B, H, W, C] with `num_steps` uniform steps (or `grid`)."""
  grid = time_grid(num_steps) if grid is None else grid
  return integrate(velocity_fn, noise, grid, method)
