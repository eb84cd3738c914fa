"""Objective `step_selector` (AdaDiff): trains ONLY a step-count policy; the generator is frozen.

The generator (any flow-matching checkpoint) is passed in: `adaflow.methods.build_objective`
loads it from `config.selector.generator_workdir` (`adaflow train --init <generator workdir>` sets
it; checkpoint `selector.generator_step`, the latest when the run starts, then pinned), with the evaluation classifier; it is a constant of this objective; the trainable state is the policy plus the REINFORCE baseline:

    params = {'params': <StepPolicy params>, 'reinforce': {'value': f32[], 'initialized': f32[]}}

One training step (batch labels [B] from the dataset; the images are not used):

    noise [B, H, W, C] ~ N(0, 1);  logits = policy(features(y_embed[y], noise stats))
    a ~ softmax(logits);  for EVERY s in the step set: x_s = ODE(noise, y, s steps)  (jitted,
    static shapes: one scan per step count, each over the whole batch)
    R = quality(x_a, x_max, y) - beta * s_a / s_max;  REINFORCE loss (adaflow.rl.reinforce)
    baseline <- moving average of R  (returned as the loss's side output, applied by `after_update`)

Batching choice: every step count is run on the whole batch (cost per input = sum of the step
set, e.g. 124 steps for (4, 8, 16, 32, 64), under 2x the max-step sample that the `closeness` and
`features` rewards need anyway). Shapes are static, there is one compiled program, and the
rewards of all actions are known (logged as `oracle_*`), at the price of compute the chosen
actions alone would not need. Test-time sampling (`sample_grouped`) instead groups inputs by the
policy's argmax step count and runs each group only at its own step count.
"""
from __future__ import annotations

import time
from typing import Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from adaflow.config import require
from adaflow import flow
from adaflow import storage
from adaflow.models import step_selector as sel
from adaflow.flow.driver import map_batches
from adaflow.objectives.base import ObjectiveBase
from adaflow.parallel import local_mesh
from adaflow.parallel.host import to_host
from adaflow.parallel.precision import describe_compute_dtype
from adaflow.rl import reinforce as rl
from adaflow.rl import rewards as rw


class StepSelectorObjective(ObjectiveBase):
  """REINFORCE training of `StepPolicy` against a frozen generator (see the module docstring)."""

  has_side = True   # the REINFORCE baseline

  @classmethod
  def validate(cls, config, info) -> None:
    """Checks `config.selector` (no compilation)."""
    del info
    s = config.selector
    sel.parse_actions(s.actions, s.step_set, s.method or config.sample.method)
    require(s.cost in sel.COSTS, "selector.cost", f"must be one of {sel.COSTS}, got {s.cost!r}")
    require(s.quality in rw.QUALITIES, "selector.quality", f"must be one of {rw.QUALITIES}, got {s.quality!r}")
    require(bool(s.generator_workdir), "selector.generator_workdir", "the frozen generator is not set; pass "
            "`--init <generator workdir>` or --config.selector.generator_workdir=<dir>")
    require(isinstance(s.generator_step, int) and s.generator_step >= -1, "selector.generator_step",
            f"must be a checkpoint step of the generator run or -1 (the latest), got {s.generator_step!r}")
    require(s.beta >= 0, "selector.beta", f"must be >= 0, got {s.beta}")
    require(s.entropy_coef >= 0, "selector.entropy_coef", f"must be >= 0, got {s.entropy_coef}")
    require(0.0 <= s.baseline_decay < 1.0, "selector.baseline_decay", f"must be in [0, 1), got {s.baseline_decay}")
    require(s.lr > 0, "selector.lr", f"must be positive (the compose recipe's policy learning rate), got {s.lr}")
    if s.hidden < 1 or s.depth < 0:
      raise ValueError("config.selector.hidden must be >= 1 and config.selector.depth >= 0")
    require(s.quality not in ("classifier", "features") or int(s.classifier_seed) != int(config.eval.classifier_seed),
            "selector.classifier_seed", f"{s.classifier_seed} equals eval.classifier_seed, so the "
            "policy would be scored (FD, accuracy) by the network it is rewarded with; use another seed")
    require(not s.method or s.method in flow.samplers.METHODS, "selector.method",
            f"must be '' or one of {flow.samplers.METHODS}, got {s.method!r}")

  @staticmethod
  def use_init_workdir(config, workdir: str) -> bool:
    """`adaflow train --init <dir>` for this objective: <dir> is the frozen generator."""
    config.selector.generator_workdir = storage.absolute(workdir)
    return True

  def __init__(self, config, info, generator, generator_params, classifier=None, sample_config=None):
    """`generator` (the composed generator, adaflow.methods.generator_for: `integrate_noise`) with its
    `generator_params`;
    `classifier` (a FeatureClassifier: `num_classes`, `params`, `network`) for the 'classifier' /
    'features' qualities; `sample_config` the generator's `config.sample` (default this config's).
    Loading them from a workdir is `adaflow.methods.step_selector_objective`."""
    s = config.selector
    self.config, self.info = config, info
    self.num_classes = info.num_classes
    self.generator_params = jax.tree_util.tree_map(jnp.asarray, jax.device_get(generator_params))
    # Frozen params: their static parts (routing's snapped ratios) are compiled in once.
    self.generator = generator.specialize(self.generator_params)
    # The tree whose ['params']['y_embed'] the policy reads (with several timestep groups: one group's).
    self.condition_params = generator.condition_params(self.generator_params)
    sample_cfg = sample_config if sample_config is not None else config.sample
    self.method = s.method or sample_cfg.method
    self.cfg_scale = float(s.cfg_scale) if s.cfg_scale >= 0 else float(sample_cfg.cfg_scale)
    self.actions = sel.parse_actions(s.actions, s.step_set, self.method)
    self.step_set = tuple(n for _, n in self.actions)    # steps of each action (repeats across solvers)
    self.costs = self.action_costs(s.cost)
    self.reference = int(np.argmax(self.costs))           # the most expensive action: the rewards' reference
    self.max_steps = max(self.step_set)
    self.use_noise_stats = bool(s.use_noise_stats)
    self.beta = float(s.beta)
    self.entropy_coef = float(s.entropy_coef)
    self.baseline_decay = float(s.baseline_decay)
    self.policy = sel.StepPolicy(num_actions=len(self.actions), hidden=int(s.hidden), depth=int(s.depth))
    self.classifier = classifier
    self.quality_fn = rw.make_quality_fn(s.quality, classifier)
    self._group_fns: dict = {}
    self._choose_fn = None     # the jitted policy, made on the first policy sampling

  def action_costs(self, cost: str) -> tuple[float, ...]:
    """The reward's compute term of each action (`selector.cost`): its steps, its network
    evaluations on the generator's sampling grid, or the generator's analytic sampling FLOPs."""
    if cost == "steps":
      return tuple(float(n) for _, n in self.actions)
    if cost == "nfe":
      return tuple(float(self.generator.network_evaluations(n, m)) for m, n in self.actions)
    if cost == "flops":
      p = jax.device_get(self.generator_params)
      return tuple(float(self.generator.sampling_flops(p, n, m, self.cfg_scale)) for m, n in self.actions)
    raise ValueError(f"config.selector.cost: must be one of {sel.COSTS}, got {cost!r}")

  # ---- policy -------------------------------------------------------------------------------
  @property
  def feature_dim(self) -> int:
    d = int(self.condition_params["params"]["y_embed"].shape[-1])
    if self.use_noise_stats:
      d += sel.NUM_NOISE_STATS_PER_CHANNEL * int(self.info.image_shape[-1])
    return d

  def init(self, rng: jax.Array):
    """{'params': policy params, 'reinforce': baseline state} (no logical axes: replicated)."""
    policy = self.policy.init(rng, jnp.zeros((1, self.feature_dim), jnp.float32))["params"]
    return {"params": policy, "reinforce": rl.init_baseline()}

  def noise(self, rng: jax.Array, batch: int) -> jax.Array:
    """Initial noise [batch, H, W, C], drawn exactly as the generator's `generate` draws it."""
    return jax.random.normal(rng, (batch,) + tuple(self.info.image_shape), jnp.float32)

  def logits(self, params, labels: jax.Array, noise: jax.Array) -> jax.Array:
    """labels [B], noise [B, H, W, C] -> logits [B, A]."""
    feats = sel.policy_features(self.condition_params, labels, noise, self.use_noise_stats)
    return self.policy.apply({"params": params["params"]}, feats)

  def choose(self, params, labels: jax.Array, noise: jax.Array) -> jax.Array:
    """Test-time (argmax) action indices [B]."""
    return sel.greedy_actions(self.logits(params, labels, noise))

  # ---- generation -----------------------------------------------------------------------------
  def generate_with_action(self, generator_params, labels: jax.Array, noise: jax.Array, a: int) -> jax.Array:
    """The frozen generator's sample from `noise` [B, H, W, C] with action `a` (static: its solver
    and steps)."""
    method, steps = self.actions[a]
    return self.generator.integrate_noise(generator_params, labels, noise, steps=int(steps), method=method,
                                          cfg_scale=self.cfg_scale)

  def generate_all(self, labels: jax.Array, noise: jax.Array) -> jax.Array:
    """Every action on the whole batch: [A, B, H, W, C] (no gradient)."""
    out = jnp.stack([self.generate_with_action(self.generator_params, labels, noise, a)
                     for a in range(len(self.actions))])
    return jax.lax.stop_gradient(out)

  def describe_compute(self) -> str:
    return f"policy float32; the frozen generator: {describe_compute_dtype(self.generator.config.model)}"

  def sampling_record(self, steps: int, method: str, cfg_scale: float) -> dict:
    """The policy picks each input's (solver, steps) among its actions, at the selector's CFG scale."""
    del steps, method, cfg_scale
    return dict(sample_method="step_policy", actions=[sel.action_label(a) for a in self.actions],
                cfg_scale=self.cfg_scale)

  def generate(self, params, rng: jax.Array, labels: jax.Array, *, steps: Optional[int] = None,
               method: Optional[str] = None, cfg_scale: Optional[float] = None, grid=None) -> jax.Array:
    """labels [B] -> images [B, H, W, C] at the policy's argmax step count per input (jittable).

    `steps`, `method`, `cfg_scale`, `grid` are ignored: the policy picks the steps and the
    selector's own method / CFG scale are used. Runs every step count on the whole batch and
    selects (static shapes); `sample_grouped` is the efficient version with the same noise.
    """
    del steps, method, cfg_scale, grid
    noise = self.noise(rng, labels.shape[0])
    actions = self.choose(params, labels, noise)
    imgs = self.generate_all(labels, noise)
    return jnp.take_along_axis(imgs, actions[None, :, None, None, None], axis=0)[0]

  def _group_fn(self, a: int):
    if a not in self._group_fns:
      self._group_fns[a] = jax.jit(lambda p, y, z: self.generate_with_action(p, y, z, a))
    return self._group_fns[a]

  def sample_grouped(self, params, rng: jax.Array, labels: np.ndarray, batch_size: int = 256,
                     actions: Optional[np.ndarray] = None, mesh: Optional[Mesh] = None) -> dict:
    """Policy sampling, inputs grouped by chosen action (each group runs only its solver and steps).

    labels [N] -> {'images': [N, H, W, C] numpy, 'steps': [N] int, 'actions': [N] (indices into
    `self.actions`), 'seconds_per_group': {action label: s}}. The noise is `self.noise(rng, N)` (so a fixed key gives the
    same images). Each group runs through the sampling driver (adaflow.flow.driver.map_batches on
    `mesh`, default this process's devices) in batches of `batch_size`, padded to buckets from 8 so
    few shapes are compiled. `actions` overrides the policy (e.g. fixed-step baselines).
    """
    labels = np.asarray(labels, np.int32)
    chex.assert_rank(labels, 1)
    n = labels.shape[0]
    noise = self.noise(rng, n)
    if actions is None:
      # Host copies: the policy runs on each process's own device (checkpoint params may span
      # processes); every process computes the same actions and images.
      params = to_host(params)
      if self._choose_fn is None:
        self._choose_fn = jax.jit(self.choose)   # one compiled policy, not a new jit wrapper per call
      actions = np.asarray(self._choose_fn(params, jnp.asarray(labels), noise))
    actions = np.asarray(actions, np.int32)
    noise_np = np.asarray(noise)
    mesh = local_mesh() if mesh is None else mesh
    out = np.zeros((n,) + tuple(self.info.image_shape), np.float32)
    seconds = {}
    for a, action in enumerate(self.actions):
      idx = np.nonzero(actions == a)[0]
      if idx.size == 0:
        continue
      t0 = time.perf_counter()
      fn = self._group_fn(a)
      out[idx] = map_batches(lambda i, y, z: fn(self.generator_params, y, z), mesh, [labels[idx], noise_np[idx]],
                             batch_size, smallest=8)
      seconds[sel.action_label(action)] = time.perf_counter() - t0
    steps = np.asarray(self.step_set, np.int32)[actions]
    return {"images": out, "steps": steps, "actions": actions, "seconds_per_group": seconds}

  # ---- training --------------------------------------------------------------------------------
  def loss(self, params, batch, rng: jax.Array):
    """batch {'label': [B], ...} -> (REINFORCE surrogate loss, (metrics, side = the new baseline))."""
    labels = batch["label"].astype(jnp.int32)
    chex.assert_rank(labels, 1)
    b = labels.shape[0]
    k_noise, k_act = jax.random.split(rng)
    noise = self.noise(k_noise, b)
    logits = self.logits(params, labels, noise)
    actions = sel.sample_actions(k_act, logits)
    images = self.generate_all(labels, noise)                            # [A, B, H, W, C]
    q_all = jax.lax.stop_gradient(rw.all_action_quality(self.quality_fn, images, labels, self.reference))  # [B, A]
    quality = jnp.take_along_axis(q_all, actions[:, None], axis=-1)[:, 0]
    costs = jnp.asarray(self.costs, jnp.float32)
    max_cost = float(max(self.costs))
    rewards = rw.step_reward(quality, costs[actions], max_cost, self.beta)
    baseline = rl.current_baseline(params["reinforce"], rewards)
    loss, m = rl.reinforce_loss(logits, actions, rewards, baseline, self.entropy_coef)
    set_f = jnp.asarray(self.step_set, jnp.float32)
    r_all = q_all - self.beta * costs[None, :] / max_cost
    greedy = sel.greedy_actions(logits)
    metrics = dict(m, loss=loss, reward=jnp.mean(rewards), quality=jnp.mean(quality),
                   avg_steps=jnp.mean(set_f[actions]), avg_cost=jnp.mean(costs[actions]), baseline=baseline,
                   greedy_avg_steps=jnp.mean(set_f[greedy]),
                   oracle_reward=jnp.mean(jnp.max(r_all, axis=-1)),
                   max_step_quality=jnp.mean(q_all[:, self.reference]))
    for i, action in enumerate(self.actions):
      name = str(action[1]) if len(set(m for m, _ in self.actions)) == 1 else f"{action[0]}{action[1]}"
      metrics[f"frac_{name}"] = jnp.mean((actions == i).astype(jnp.float32))
    side = rl.update_baseline(params["reinforce"], rewards, self.baseline_decay)
    return loss, (metrics, side)

  def after_update(self, params, side):
    """Writes the new moving-average baseline into the params tree (after the optimizer step)."""
    return dict(params, reinforce=side)
