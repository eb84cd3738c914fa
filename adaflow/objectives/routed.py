"""`routed_flow_matching`: flow matching through a DiffCR-routed DiT + the ratio loss.

    loss = mean over the batch of |v_theta(x_t, t, y) - (x - eps)|^2
           + routing.ratio_loss_weight * (mean(rho) - routing.target)^2

t is drawn from `flow.t_sampler` as in dense training; each example uses the ratios of its own
timestep region (masked full-width training path, see `adaflow.models.routing`). After every
optimizer step rho is projected onto [rho_min, rho_max] (`after_update`).

PPFlow composition: `loss(..., stage=s)` and `apply(..., stage=s)` pass the patch stage to the
DiT, and routing wraps whichever stage's blocks run (k = ceil(rho * N_s)
from that stage's token count), so no block code is duplicated.

Fine-tuning from a dense checkpoint: `adaflow train --init <dense workdir>`; the loop calls
`merge_init_params`, which copies every dense parameter and initialises routers and rho fresh.
"""
from __future__ import annotations

import jax

from adaflow.models.routing.ratios import project_ratios
from adaflow.models.routing.routed_dit import merge_params, routed_dit_from_config
from adaflow.models.routing.spec import spec_from_config, validate_routing_config
from adaflow.objectives import flow_loss
from adaflow.objectives.flow_matching import FlowMatchingObjective


class RoutedFlowMatchingObjective(FlowMatchingObjective):
  """Flow matching with DiffCR token routing; see the module docstring."""

  def __init__(self, config, info):
    super().__init__(config, info)
    self.spec = spec_from_config(config)
    self.model = routed_dit_from_config(config, info.image_shape, info.num_classes)

  def init(self, rng: jax.Array):
    """Boxed variables: the DiT's (every patch stage) + router_{i}/kernel + rho."""
    stages = range(self.model.num_stages)
    return self.model.init(rng, *self.dummy_inputs(), method=lambda m, *a: [m(*a, mode="train", stage=s) for s in stages])

  def apply(self, params, x_t, t, y, *, mode: str = "infer", stage: int = 0):
    """Prediction [B, H, W, C]; `mode` as in RoutedDiT (sampling uses "infer": snapped bins)."""
    return self.model.apply(params, x_t, t, y, mode=mode, stage=stage)

  def merge_init_params(self, init_params, rng: jax.Array):
    """Dense (or routed) `--init` params -> full routed tree (new routers/rho initialised)."""
    import flax.linen as nn
    fresh = jax.device_get(nn.meta.unbox(jax.jit(self.init)(rng)))
    return merge_params(init_params, fresh)

  @classmethod
  def validate(cls, config, info) -> None:
    validate_routing_config(config, info)

  def after_update(self, params, side):
    """rho projected onto [rho_min, rho_max] after every optimizer step."""
    del side
    return project_ratios(params, self.spec)

  def loss(self, params, batch, rng: jax.Array, stage: int = 0):
    """batch: {'image': [B, H, W, C], 'label': [B]} -> (flow loss + weighted ratio loss, metrics)."""
    fm_loss, metrics = super().loss(params, batch, rng, mode="train", stage=stage)
    r_loss, mean_ratio = flow_loss.ratio_penalty([params["params"]["rho"]], self.spec)
    total = fm_loss + self.spec.ratio_loss_weight * r_loss
    metrics = dict(metrics, loss=total, flow_loss=fm_loss, ratio_loss=r_loss, mean_ratio=mean_ratio)
    return total, metrics
