"""Flow-matching objective for the DiT family: x_t = t x + (1 - t) eps, MSE on the velocity.

See `adaflow.flow.interpolants` for the time convention (t = 0 noise, t = 1 data).
"""
from __future__ import annotations

from typing import Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from adaflow import flow
from adaflow.models.dit import dit_from_config


class FlowMatchingObjective:
  """Trains `model(x_t, t, y)` to predict the interpolant's target; samples with an ODE solver."""

  def __init__(self, config, info):
    self.config = config
    self.info = info
    self.num_classes = info.num_classes
    self.null_label = info.num_classes
    self.model = dit_from_config(config.model, info.image_shape, info.num_classes)
    self.interpolant = flow.make_interpolant(config.flow)
    self.class_dropout = float(config.model.get("class_dropout", 0.1))

  # ---- parameters -------------------------------------------------------------------------
  def dummy_inputs(self, batch: int = 1):
    h, w, c = self.info.image_shape
    return (jnp.zeros((batch, h, w, c), jnp.float32), jnp.zeros((batch,), jnp.float32),
            jnp.zeros((batch,), jnp.int32))

  def init(self, rng: jax.Array):
    """Boxed Flax variables {'params': ...} with logical axis names."""
    return self.model.init(rng, *self.dummy_inputs())

  # ---- training ----------------------------------------------------------------------------
  def apply(self, params, x_t, t, y, **kw):
    """Network prediction [B, H, W, C]. params: unboxed {'params': ...} tree."""
    return self.model.apply(params, x_t, t, y, **kw)

  def drop_labels(self, rng: jax.Array, y: jax.Array) -> jax.Array:
    """Replaces labels by the null label with probability `model.class_dropout` (CFG training)."""
    if self.class_dropout <= 0:
      return y
    drop = jax.random.uniform(rng, y.shape) < self.class_dropout
    return jnp.where(drop, self.null_label, y)

  def loss(self, params, batch, rng: jax.Array, t: Optional[jax.Array] = None, **apply_kw):
    """batch: {'image': [B, H, W, C] in [-1, 1], 'label': [B]} -> (loss, metrics)."""
    x, y = batch["image"], batch["label"]
    chex.assert_rank(x, 4)
    k_t, k_noise, k_drop = jax.random.split(rng, 3)
    if t is None:
      t = flow.sample_t(k_t, x.shape[0], self.config.flow)
    noise = jax.random.normal(k_noise, x.shape, jnp.float32)
    x_t, target = self.interpolant.path(x, noise, t)
    pred = self.apply(params, x_t, t, self.drop_labels(k_drop, y), **apply_kw)
    chex.assert_equal_shape([pred, target])
    loss = jnp.mean(jnp.square(pred - target))
    return loss, {"loss": loss}

  # ---- sampling ----------------------------------------------------------------------------
  def velocity_fn(self, params, labels: jax.Array, cfg_scale: float, **apply_kw) -> flow.samplers.VelocityFn:
    def model_fn(x, t, y):
      return self.interpolant.velocity(self.apply(params, x, t, y, **apply_kw), x, t)
    return flow.guided(model_fn, labels, self.null_label, cfg_scale)

  def generate(self, params, rng: jax.Array, labels: jax.Array, *, steps: int, method: str = "heun",
               cfg_scale: float = 1.0, grid: Optional[np.ndarray] = None) -> jax.Array:
    """labels [B] -> images [B, H, W, C] (not clipped). Pure function of (params, rng, labels)."""
    noise = jax.random.normal(rng, (labels.shape[0],) + tuple(self.info.image_shape), jnp.float32)
    # The interpolant lets the solver stop short of a singular endpoint and turn v into a score (sde).
    opts = flow.solver_options(self.config.get("sample") or {}, self.interpolant, jax.random.fold_in(rng, 1))
    return flow.sample(self.velocity_fn(params, labels, cfg_scale), noise, steps, method, grid, **opts)
