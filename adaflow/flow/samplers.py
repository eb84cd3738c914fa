"""Samplers: integrate from noise (t = 0) to data (t = 1), by ODE or SDE.

A *velocity function* maps (x [B, H, W, C], t [B]) -> v [B, H, W, C], the probability-flow ODE
velocity dx/dt. The time grid is a static numpy array, so the number of steps is part of the
compiled program; methods that change the network per segment of time (PPFlow stages, timestep
groups) integrate each segment with its own velocity function by calling `integrate` on
consecutive slices of the same grid.

Methods (`sample.method`):
* `euler`, `heun`: explicit Euler / Heun's 2nd-order method (1 / 2 network calls per step);
* `ab2`: 2nd-order Adams-Bashforth on the velocity (1 call per step: the previous step's velocity
  is reused, with the variable-step coefficients; the first step is Euler), the linear-multistep
  counterpart of DPM-Solver++(2M) (arXiv 2211.01095) for a velocity-predicting network;
* `sde`: Euler-Maruyama on the SDE with the same marginals as the ODE (SiT, arXiv 2401.08740):
  dx = [v + w(t) s(x, t)] dt + sqrt(2 w(t)) dW, where the score s comes from the velocity through
  the interpolant and w(t) is `sample.diffusion_form` scaled by `sample.diffusion_norm`; the step
  that ends at t = 1 is deterministic (the drift only, SiT's "Mean" last step).

Given the interpolant, every method also *stops short of a singular endpoint*: a noise-predicting
network cannot give the velocity at t = 0 (x_data = (x - sigma eps) / alpha divides by alpha = 0),
a data-predicting one not at t = 1 (eps = (x - alpha x) / sigma, sigma = 0), so the network is
evaluated at times clamped `Interpolant.endpoint_margin` inside [0, 1] (the steps still span the
whole grid). Without this a 1e-3 network error became an output error of ~5 with 10 steps.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from adaflow.flow.interpolants import Interpolant, _bcast  # [B] -> [B, 1, 1, 1]

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
METHODS = ("euler", "heun", "ab2", "sde")
# What a multistep solver does where a piecewise generator's network changes (sample.multistep_history).
MULTISTEP_HISTORY = ("keep", "restart")
# SiT's choices of the diffusion coefficient w(t) (transport/path.py compute_diffusion), in the
# framework's time (t = 0 noise, t = 1 data); `sigma` (SiT's default) keeps w(t) s(x, t) bounded at t = 1.
DIFFUSION_FORMS = ("constant", "sigma", "linear", "decreasing", "increasing-decreasing")


def time_grid(num_steps: int, t0: float = 0.0, t1: float = 1.0) -> np.ndarray:
  """Uniform grid of num_steps + 1 times from t0 to t1."""
  if num_steps < 1:
    raise ValueError(f"sample.steps must be >= 1, got {num_steps}")
  return np.linspace(t0, t1, num_steps + 1, dtype=np.float64)


def diffusion_coefficient(form: str, norm: float, interpolant: Interpolant, t: jax.Array) -> jax.Array:
  """w(t) >= 0 of the SDE sampler (same shape as t)."""
  if form == "constant":
    return norm * jnp.ones_like(t)
  if form == "sigma":
    return norm * interpolant.sigma(t)
  if form == "linear":
    return norm * (1.0 - t)
  if form == "decreasing":          # large near noise (t = 0), small near data
    return 0.25 * (norm * jnp.cos(math.pi * t) + 1.0) ** 2
  if form == "increasing-decreasing":
    return norm * jnp.sin(math.pi * t) ** 2
  raise ValueError(f"sample.diffusion_form must be one of {DIFFUSION_FORMS}, got {form!r}")


def score_from_velocity(interpolant: Interpolant, v: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
  """grad log p_t(x) from the ODE velocity. x = a x1 + s eps and v = a' x1 + s' eps give
  E[eps | x] = (a v - a' x) / (a s' - a' s) and score = -E[eps | x] / s. t: [B]."""
  tb = _bcast(t, x)
  a, s, da, ds = interpolant.alpha(tb), interpolant.sigma(tb), interpolant.d_alpha(tb), interpolant.d_sigma(tb)
  eps = (a * v - da * x) / (a * ds - da * s)
  return -eps / s


def solver_options(sample_config, interpolant: Interpolant, rng: Optional[jax.Array]) -> dict:
  """Keyword arguments of `integrate` from `config.sample` (the SDE fields) and the objective's
  interpolant; `rng` drives the SDE's Brownian increments. (An unknown `diffusion_form` raises
  where the SDE uses it, `diffusion_coefficient`; a negative norm would not, so it is checked here.)"""
  form = sample_config.diffusion_form
  norm = float(sample_config.diffusion_norm)
  if norm < 0:
    raise ValueError(f"sample.diffusion_norm must be >= 0 (0 = the ODE), got {norm}")
  return dict(interpolant=interpolant, rng=rng, diffusion_form=form, diffusion_norm=norm)


def integrate(velocity_fn: VelocityFn, x: jax.Array, grid: np.ndarray, method: str = "euler", *,
              interpolant: Optional[Interpolant] = None, rng: Optional[jax.Array] = None,
              diffusion_form: str = "sigma", diffusion_norm: float = 1.0,
              end_velocity_fn: Optional[VelocityFn] = None, history: Optional[tuple] = None,
              return_history: bool = False):
  """Integrates from grid[0] to grid[-1]. x: [B, H, W, C]. Uses `lax.scan` over the steps so the
  compiled program stays small for any number of steps. `interpolant` (needed by `sde`) also
  clamps the network's evaluation times away from its prediction's singular endpoint.

  Piecewise integration (a generator whose network changes with t calls this once per run of
  steps): `end_velocity_fn` evaluates Heun's second call at each step's end (default
  `velocity_fn`); `history` = (v_prev [B, H, W, C], h_prev scalar) continues a multistep (ab2) run
  from the previous run's last velocity and step size instead of restarting with an Euler step;
  `return_history` returns (x, history) for the next run."""
  if method not in METHODS:
    raise ValueError(f"sample.method must be one of {METHODS}, got {method!r}")
  if method == "sde" and (interpolant is None or rng is None):
    raise ValueError("sample.method='sde' needs the objective's interpolant and a PRNG key; this "
                     "generator does not pass them: use sample.method='euler', 'heun' or 'ab2'")
  grid = np.asarray(grid, np.float32)
  if len(grid) < 2:
    return (x, history) if return_history else x
  lo, hi = interpolant.eval_range() if interpolant is not None else (0.0, 1.0)
  b = x.shape[0]

  def vel(x, t, fn=velocity_fn):
    return fn(x, jnp.full((b,), 1.0, jnp.float32) * jnp.clip(t, lo, hi))

  end_fn = velocity_fn if end_velocity_fn is None else end_velocity_fn
  n = len(grid) - 1
  ends_at_data = bool(abs(float(grid[-1]) - 1.0) < 1e-6)
  h0 = 1.0 if history is None else history[1]
  steps = dict(t=grid[:-1], t_next=grid[1:], h_prev=jnp.concatenate([jnp.reshape(jnp.asarray(h0, jnp.float32), (1,)),
                                                                     jnp.asarray(np.diff(grid)[:-1], jnp.float32)]),
               first=(np.arange(n) == 0) & (history is None), last=(np.arange(n) == n - 1) & ends_at_data,
               index=np.arange(n))
  steps = {k: jnp.asarray(v) for k, v in steps.items()}

  def body(carry, st):
    x, v_prev = carry
    t, t_next = st["t"], st["t_next"]
    dt = t_next - t
    v = vel(x, t)
    if method == "euler":
      return (x + dt * v, v), None
    if method == "heun":
      v_next = vel(x + dt * v, t_next, end_fn)
      return (x + dt * 0.5 * (v + v_next), v), None
    if method == "ab2":
      r = dt / st["h_prev"]
      stepped = x + dt * ((1.0 + 0.5 * r) * v - 0.5 * r * v_prev)
      return (jnp.where(st["first"], x + dt * v, stepped), v), None
    # sde: Euler-Maruyama; the score is taken at the same (clamped) time as the velocity.
    tc = jnp.full((b,), 1.0, jnp.float32) * jnp.clip(t, lo, hi)
    w = _bcast(diffusion_coefficient(diffusion_form, diffusion_norm, interpolant, tc), x)
    drift = v + w * score_from_velocity(interpolant, v, x, tc)
    mean = x + dt * drift
    noise = jax.random.normal(jax.random.fold_in(rng, st["index"]), x.shape, x.dtype)
    return (jnp.where(st["last"], mean, mean + jnp.sqrt(2.0 * w * dt) * noise), v), None

  (x, v_last), _ = jax.lax.scan(body, (x, jnp.zeros_like(x) if history is None else history[0]), steps)
  return (x, (v_last, jnp.asarray(grid[-1] - grid[-2], jnp.float32))) if return_history else x


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
