"""REINFORCE for the AdaDiff step selector, in one file.

The policy pi(a | c) picks a step count per input; the generator is frozen. One update:

    a ~ pi(. | c)                                       (sample while training, argmax at test)
    R = quality(x_a, c) - beta * steps[a] / max_steps   (adaflow.rl.rewards)
    loss = -mean((R - b) * log pi(a | c)) - entropy_coef * mean(H(pi(. | c)))
    b <- decay * b + (1 - decay) * mean(R)              (moving-average baseline, after the update)

The gradient of the first term is the score-function estimate of -grad E[R]; subtracting the
baseline b (which does not depend on a) keeps it unbiased and lowers its variance; the entropy
bonus keeps the policy from collapsing onto one action before the rewards are known. The very
first batch (no baseline yet) uses its own mean reward as b.

Two ways to drive it:
  * `adaflow.objectives.step_selector` (the `adaflow train` path): generation happens inside the
    loss, the baseline lives in the params tree and is set by the objective's `after_update`.
  * `reinforce_train` below: a self-contained loop over a fixed pool of inputs with a reward
    function (bandits in the tests; the benchmark's beta sweep over a table of measured qualities).
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax


def init_baseline() -> dict:
  """Baseline state {'value': f32[], 'initialized': f32[] (0 or 1)}."""
  return {"value": jnp.zeros((), jnp.float32), "initialized": jnp.zeros((), jnp.float32)}


def current_baseline(baseline: dict, rewards: jax.Array) -> jax.Array:
  """The b to subtract for this batch: the moving average, or the batch mean on the first batch."""
  return jnp.where(baseline["initialized"] > 0, baseline["value"], jnp.mean(rewards))


def update_baseline(baseline: dict, rewards: jax.Array, decay: float) -> dict:
  """b <- decay * b + (1 - decay) * mean(rewards) (just mean(rewards) the first time)."""
  m = jnp.mean(rewards).astype(jnp.float32)
  value = jnp.where(baseline["initialized"] > 0, decay * baseline["value"] + (1.0 - decay) * m, m)
  return {"value": value, "initialized": jnp.ones((), jnp.float32)}


def entropy(logits: jax.Array) -> jax.Array:
  """Entropy of softmax(logits) per row: [B, A] -> [B] (nats)."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def reinforce_loss(logits: jax.Array, actions: jax.Array, rewards: jax.Array, baseline: jax.Array,
                   entropy_coef: float) -> tuple[jax.Array, dict]:
  """Surrogate loss whose gradient is the REINFORCE estimate (plus the entropy bonus).

  logits [B, A] (differentiable), actions [B] int32, rewards [B], baseline scalar (both treated as
  constants). Returns (loss, metrics).
  """
  chex.assert_rank(logits, 2)
  chex.assert_shape(actions, (logits.shape[0],))
  chex.assert_shape(rewards, (logits.shape[0],))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  logp_a = jnp.take_along_axis(logp, actions[:, None], axis=-1)[:, 0]
  advantage = jax.lax.stop_gradient(rewards.astype(jnp.float32) - baseline)
  ent = entropy(logits.astype(jnp.float32))
  pg = -jnp.mean(advantage * logp_a)
  loss = pg - entropy_coef * jnp.mean(ent)
  return loss, {"pg_loss": pg, "entropy": jnp.mean(ent), "advantage_std": jnp.std(advantage)}


def reinforce_train(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, features: np.ndarray,
                    reward_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], *, steps: int,
                    batch_size: int, rng: jax.Array, lr: float = 1e-2, entropy_coef: float = 0.01,
                    baseline_decay: float = 0.9) -> tuple[Any, list[dict]]:
  """REINFORCE on a fixed pool of inputs.

  apply_fn(params, features [B, F]) -> logits [B, A]; features: the pool [N, F];
  reward_fn(indices [B], actions [B], rng) -> rewards [B] (jittable). Each step draws `batch_size`
  pool indices uniformly, samples actions from the policy, and applies one Adam update.
  Returns (params, history of per-step metrics as floats).
  """
  feats = jnp.asarray(features, jnp.float32)
  chex.assert_rank(feats, 2)
  n = feats.shape[0]
  tx = optax.adam(lr)
  opt_state = tx.init(params)
  baseline = init_baseline()

  @jax.jit
  def step(params, opt_state, baseline, key):
    k_idx, k_act, k_rew = jax.random.split(key, 3)
    idx = jax.random.randint(k_idx, (batch_size,), 0, n)
    logits_now = apply_fn(params, feats[idx])
    actions = jax.random.categorical(k_act, logits_now, axis=-1).astype(jnp.int32)
    rewards = reward_fn(idx, actions, k_rew)
    b = current_baseline(baseline, rewards)

    def loss_fn(p):
      return reinforce_loss(apply_fn(p, feats[idx]), actions, rewards, b, entropy_coef)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = dict(metrics, loss=loss, reward=jnp.mean(rewards), baseline=b)
    return params, opt_state, update_baseline(baseline, rewards, baseline_decay), metrics

  history = []
  for i in range(steps):
    params, opt_state, baseline, metrics = step(params, opt_state, baseline, jax.random.fold_in(rng, i))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return params, history
