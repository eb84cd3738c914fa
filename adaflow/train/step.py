"""The jitted train step: loss -> grads -> optax update -> EMA."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from adaflow.train.state import TrainState, ema_update


def make_train_step(objective, tx: optax.GradientTransformation, ema_decay: float, lr_schedule=None,
                    debug_nan_step: int = -1):
  """Returns `step(state, batch) -> (state, metrics)` (pure; jit it with shardings).

  The per-step key is `fold_in(state.rng, state.step)`, so a resumed run draws exactly the noise,
  times and label drops that an uninterrupted run draws.

  Non-finite guard: if the loss or the gradient norm is NaN/Inf, the update is dropped inside the
  compiled step (`jax.lax.cond` on `jnp.isfinite`): params, optimizer state and EMA keep their
  previous values, only `step` advances, and `metrics["nonfinite"]` is 1.0. The loop then stops
  (`train.nan_policy="stop"`) or continues (`"skip"`). `debug_nan_step >= 0` multiplies the loss
  by NaN at that `state.step` (NaN loss and gradients) to test this path.
  """

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(params):
      loss, aux = objective.loss(params, batch, rng)
      if debug_nan_step >= 0:
        loss = loss * jnp.where(state.step == debug_nan_step, jnp.nan, 1.0).astype(loss.dtype)
      return loss, aux

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics, side = aux if objective.has_side else (aux, None)   # has_side: aux is (metrics, side)
    metrics = dict(metrics)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(params, opt_state, ema):
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      # Non-gradient updates (EMA codebook statistics from `side`, projections of routing ratios),
      # applied after the optimizer step.
      params = objective.after_update(params, side)
      return params, opt_state, ema_update(ema, params, state.step, ema_decay)

    # A conditional rather than a `jnp.where` per leaf: the same values, but XLA:CPU compiled the
    # selects as four more kernels per leaf shape, each repeating the update's arithmetic; with the
    # conditional the dense testbed step compiles in 0.74x the time (experiments/results/compile_vs_ref.md).
    params, opt_state, ema = jax.lax.cond(finite, update, lambda *old: old,
                                          state.params, state.opt_state, state.ema_params)
    metrics.setdefault("loss", loss)
    metrics["grad_norm"] = grad_norm
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    if lr_schedule is not None:
      metrics["lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    return new_state, metrics

  return train_step
