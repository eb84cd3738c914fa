"""Flow-matching objective for the DiT family: x_t = t x + (1 - t) eps, MSE on the velocity.

See `adaflow.flow.interpolants` for the time convention (t = 0 noise, t = 1 data).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from adaflow import flow
from adaflow.models.dit import dit_from_config
from adaflow.objectives import flow_loss
from adaflow.objectives.base import ObjectiveBase


class FlowMatchingObjective(ObjectiveBase):
  """Trains `model(x_t, t, y)` to predict the interpolant's target (adaflow.objectives.flow_loss);
  sampling is adaflow.compose.generator_for's."""

  def __init__(self, config, info):
    self.config = config
    self.info = info
    self.num_classes = info.num_classes
    self.null_label = info.num_classes
    self.model = dit_from_config(config.model, info.image_shape, info.num_classes)
    self.interpolant = flow.make_interpolant(config.flow)
    self.class_dropout = float(config.model.class_dropout)

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

  def loss(self, params, batch, rng: jax.Array, t: Optional[jax.Array] = None, **apply_kw):
    """batch: {'image': [B, H, W, C] in [-1, 1], 'label': [B]} -> (loss, metrics)."""
    return flow_loss.flow_matching_loss(functools.partial(self.apply, params, **apply_kw), batch["image"],
                                        batch["label"], rng, interpolant=self.interpolant,
                                        flow_config=self.config.flow, null_label=self.null_label,
                                        class_dropout=self.class_dropout, t=t)
