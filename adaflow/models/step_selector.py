"""AdaDiff step-selection policy: pi(a | c) over a discrete set of sampling step counts, or of
(solver, step count) actions (`selector.actions`, `parse_actions`).

The condition c is the frozen generator's class-embedding row `params['params']['y_embed'][y]`
(standardised by the RMS of the whole embedding table), optionally concatenated with a few
statistics of the initial noise (`noise_statistics`). A small MLP maps c to logits [B, A] over
the step set (default (4, 8, 16, 32, 64)). The last layer starts at zero, so the initial policy
is uniform (maximal exploration).

Shapes: labels [B] int32, noise [B, H, W, C], features [B, F], logits [B, A], actions [B] int32
(indices into the step set), steps [B] int32 (the step counts themselves).
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_STEP_SET = (4, 8, 16, 32, 64)
NUM_NOISE_STATS_PER_CHANNEL = 6  # mean, variance, 4 quadrant means (see noise_statistics)


def validate_step_set(step_set, field: str = "selector.step_set") -> tuple[int, ...]:
  """Returns the step set as a tuple of ints, or raises ValueError naming `field`.

  A valid set has at least two distinct positive integers in strictly increasing order (the last
  one is the max-step reference used by the rewards), e.g. (4, 8, 16, 32, 64).
  """
  try:
    values = tuple(step_set)
  except TypeError:
    raise ValueError(f"config.{field}: must be a sequence of step counts such as {DEFAULT_STEP_SET}, "
                     f"got {step_set!r}") from None
  bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1]
  if bad:
    raise ValueError(f"config.{field}: every entry must be a positive integer number of sampling steps, "
                     f"got {bad} in {values}; use e.g. {DEFAULT_STEP_SET}")
  if len(values) < 2:
    raise ValueError(f"config.{field}: needs at least two step counts to choose from, got {values}; "
                     f"use e.g. {DEFAULT_STEP_SET}")
  if any(b <= a for a, b in zip(values, values[1:])):
    raise ValueError(f"config.{field}: must be strictly increasing without duplicates (the last entry "
                     f"is the max-step reference), got {values}; sort it, e.g. {tuple(sorted(set(values)))}")
  return tuple(int(v) for v in values)


# Solvers a policy action may use (the ODE ones: an action's images must be a function of the noise).
ACTION_METHODS = ("euler", "heun", "ab2")
COSTS = ("steps", "nfe", "flops")


def parse_actions(actions, step_set, method: str, field: str = "selector.actions") -> tuple[tuple[str, int], ...]:
  """The policy's actions as ((solver, steps), ...). `actions` = strings "solver:steps" (e.g.
  ("euler:4", "ab2:8", "heun:8")); when empty, `step_set` with the one solver `method` (the
  AdaDiff paper's action set: step counts only). Raises ValueError naming `field`."""
  if not actions:
    return tuple((method, s) for s in validate_step_set(step_set))
  out = []
  for a in actions:
    m, _, n = str(a).partition(":")
    if m not in ACTION_METHODS or not n.isdigit() or int(n) < 1:
      raise ValueError(f"config.{field}: every action is 'solver:steps' with a solver in {ACTION_METHODS} and "
                       f"steps >= 1, e.g. ('euler:4', 'ab2:8', 'heun:8'); got {a!r}")
    out.append((m, int(n)))
  if len(out) < 2 or len(set(out)) != len(out):
    raise ValueError(f"config.{field}: needs at least two distinct actions, got {tuple(actions)}")
  return tuple(out)


def action_label(action: tuple[str, int]) -> str:
  """('ab2', 8) -> 'ab2:8'."""
  return f"{action[0]}:{action[1]}"


def noise_statistics(noise: jax.Array) -> jax.Array:
  """noise [B, H, W, C] -> standardised statistics [B, 6 * C].

  Per channel: the mean, the variance minus one, and the means of the four image quadrants, each
  scaled by the standard deviation it has under N(0, 1) noise, so every feature is about N(0, 1).
  These are the low-frequency content the ODE cannot remove, which is what could make one noise
  draw harder than another for the same class.
  """
  chex.assert_rank(noise, 4)
  b, h, w, c = noise.shape
  n = h * w
  mean = jnp.mean(noise, axis=(1, 2)) * np.sqrt(n)
  var = (jnp.var(noise, axis=(1, 2)) - 1.0) * np.sqrt(n / 2.0)
  hh, hw = h // 2, w // 2
  quads = [noise[:, :hh, :hw], noise[:, :hh, hw:], noise[:, hh:, :hw], noise[:, hh:, hw:]]
  quad = [jnp.mean(q, axis=(1, 2)) * np.sqrt(q.shape[1] * q.shape[2]) for q in quads]
  out = jnp.concatenate([mean, var] + quad, axis=-1)
  chex.assert_shape(out, (b, NUM_NOISE_STATS_PER_CHANNEL * c))
  return out


def class_condition(generator_params, labels: jax.Array) -> jax.Array:
  """The frozen generator's class embedding rows for `labels` [B] -> [B, D], divided by the RMS of
  the whole table (so the policy's input scale does not depend on how the generator was trained).
  Gradients never flow into the generator."""
  table = jax.lax.stop_gradient(generator_params["params"]["y_embed"])
  chex.assert_rank(table, 2)
  scale = jnp.sqrt(jnp.mean(jnp.square(table))) + 1e-8
  return jnp.take(table, labels, axis=0) / scale


def policy_features(generator_params, labels: jax.Array, noise: jax.Array | None,
                    use_noise_stats: bool) -> jax.Array:
  """[B, D] class condition, plus [B, 6 C] noise statistics when `use_noise_stats`."""
  feats = class_condition(generator_params, labels)
  if use_noise_stats:
    if noise is None:
      raise ValueError("selector.use_noise_stats is True but no initial noise was given")
    feats = jnp.concatenate([feats, noise_statistics(noise)], axis=-1)
  return feats


class StepPolicy(nn.Module):
  """MLP features [B, F] -> logits [B, num_actions]; zero-initialised output (uniform policy)."""
  num_actions: int
  hidden: int = 64
  depth: int = 2

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    chex.assert_rank(features, 2)
    h = features.astype(jnp.float32)
    for i in range(self.depth):
      h = nn.gelu(nn.Dense(self.hidden, name=f"hidden_{i}")(h))
    logits = nn.Dense(self.num_actions, kernel_init=nn.initializers.zeros, name="logits")(h)
    chex.assert_shape(logits, (features.shape[0], self.num_actions))
    return logits


def sample_actions(rng: jax.Array, logits: jax.Array) -> jax.Array:
  """One action index per row of logits [B, A] drawn from the softmax -> [B] int32."""
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def greedy_actions(logits: jax.Array) -> jax.Array:
  """Argmax action per row (test-time choice) -> [B] int32."""
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)
