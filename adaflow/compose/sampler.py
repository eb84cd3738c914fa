"""The one sampler entry point of a composed model.

    sampler = ComposedSampler(config, info, params, policy_params)   # validates everything first
    out = sampler.sample(rng, labels)   # {'images': [N, H, W, C], 'steps': [N], 'actions': [N] or None}

`config.compose` turns on any subset of {ppflow, routing, grouped, selector} (adaflow.compose.spec).
The generator (stages / routing / groups) is `ComposedGenerator`; with the selector on, the
AdaDiff policy (`StepSelectorObjective`, the same class the policy is trained with) picks each
input's (solver, steps) action and inputs are sampled grouped by action, each group running the
composed generator at its own setting. Both paths batch and shard through the one sampling driver
(adaflow.flow.driver) on `mesh` (default: this process's devices, every process computing the same
images from host parameters). Every check (config, parameter trees, policy) runs in the
constructor, before anything is compiled.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from adaflow.compose import flops
from adaflow.compose.generator import ComposedGenerator
from adaflow.compose.spec import spec_from_config
from adaflow.flow.driver import generate_images
from adaflow.objectives.step_selector import StepSelectorObjective
from adaflow.parallel import local_mesh
from adaflow.parallel.host import to_host


def selector_objective(config, info, generator: ComposedGenerator, params: Any):
  """StepSelectorObjective over the composed generator (no classifier needed for sampling)."""
  c = config.copy_and_resolve_references()
  c.selector.quality = "closeness"  # the reward is a training-time concept; sampling needs no classifier
  return StepSelectorObjective(c, info, generator=generator, generator_params=params, classifier=None)


class ComposedSampler:
  """See the module docstring. `params`: generator params in the composed layout; `policy_params`:
  the step policy's {'params': ..., 'reinforce': ...} (selector on only)."""

  def __init__(self, config, info, params: Any, policy_params: Optional[Any] = None, mesh: Optional[Mesh] = None):
    self.config, self.info = config, info
    self.mesh = local_mesh() if mesh is None else mesh
    self.spec = spec_from_config(config, info)
    if params is None:
      if self.spec.actions is not None:
        raise ValueError("compose.selector is on but no generator params were given: the step policy needs a "
                         "generator to choose step counts for (train one: adaflow compose)")
      raise ValueError("ComposedSampler needs generator params")
    self.generator = ComposedGenerator(config, info, self.spec)
    self.generator.check_params(params)
    # Host copies: sampling runs on each process's own device (checkpoint params may span
    # processes), every process computing the same images.
    self.params = to_host(params)
    self.policy_params = to_host(policy_params)
    self.selector = None
    if self.spec.actions is not None:
      if policy_params is None:
        raise ValueError("config.compose.selector is on but no policy params were given; pass the selector "
                         "stage's params or turn compose.selector off")
      self.selector = selector_objective(config, info, self.generator, params)
      want = jax.tree_util.tree_map(np.shape, jax.eval_shape(self.selector.init, jax.random.PRNGKey(0))["params"])
      got = jax.tree_util.tree_map(np.shape, policy_params.get("params") if hasattr(policy_params, "get") else None)
      if want != got:
        raise ValueError(f"policy params do not match config.selector (actions {self.spec.actions}, hidden, depth, "
                         f"use_noise_stats): expected {want}, got {got}")
    elif policy_params is not None:
      raise ValueError("policy params were given but config.compose.selector is False; turn it on or drop them")

  def sample(self, rng: jax.Array, labels: np.ndarray, *, steps: Optional[int] = None, method: Optional[str] = None,
             cfg_scale: Optional[float] = None, batch_size: int = 256, actions: Optional[np.ndarray] = None) -> dict:
    """labels [N] -> {'images': [N, H, W, C] numpy, 'steps': [N] int, 'actions': [N] or None}.

    Without the selector: `steps` (default config.sample.steps) for every input, batches of
    `batch_size` with keys fold_in(rng, i) (adaflow.flow.driver.generate_images). With the
    selector: its noise(rng, N), the policy's argmax actions (or `actions` [N], indices into the
    policy's action set: e.g. a fixed action or a shuffled assignment as baselines), grouped
    sampling (`steps` and `method` are then ignored; CFG comes from config.selector, default
    config.sample)."""
    labels = np.asarray(labels, np.int32)
    if self.selector is not None:
      res = self.selector.sample_grouped(self.policy_params, rng, labels, batch_size=batch_size, actions=actions,
                                         mesh=self.mesh)
      return {"images": res["images"], "steps": np.asarray(res["steps"]), "actions": res["actions"]}
    s = self.config.sample
    steps = int(s.steps if steps is None else steps)
    images = generate_images(self.generator, self.params, self.mesh, rng, labels, steps=steps,
                             method=method or s.method, cfg_scale=float(s.cfg_scale if cfg_scale is None else cfg_scale),
                             batch_size=batch_size)
    return {"images": images, "steps": np.full(len(labels), steps, np.int32), "actions": None}

  def flops_per_image(self, actions_per_image: Optional[np.ndarray] = None, *, steps: Optional[int] = None,
                      method: Optional[str] = None, cfg_scale: Optional[float] = None) -> float:
    """Analytic FLOPs per image (adaflow.compose.flops); with the selector pass the chosen actions
    (sample(...)['actions'])."""
    s = self.config.sample
    if self.selector is not None:
      if actions_per_image is None:
        raise ValueError("flops_per_image: pass the selector's chosen actions (sample(...)['actions'])")
      return flops.selector_flops(self.generator, self.params, self.selector.actions, actions_per_image,
                                  self.selector.cfg_scale)
    return flops.sampling_flops(self.generator, self.params, int(s.steps if steps is None else steps),
                                method or s.method, float(s.cfg_scale if cfg_scale is None else cfg_scale))
