"""Optimizer from `config.train`: AdamW with linear warm-up, optional cosine decay, clipping."""
from __future__ import annotations

import optax


def learning_rate_schedule(train_config) -> optax.Schedule:
  lr, warmup, steps = train_config.lr, int(train_config.warmup_steps), int(train_config.steps)
  kind = train_config.schedule
  if kind == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
                                [max(warmup, 1)])
  if kind == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(steps, warmup + 1),
                                              end_value=lr * train_config.final_lr_fraction)
  raise ValueError(f"train.schedule must be 'constant' or 'cosine', got {kind!r}")


def make_optimizer(train_config) -> optax.GradientTransformation:
  """clip_by_global_norm(train.grad_clip) -> AdamW(train.lr schedule, b1, b2, weight_decay)."""
  chain = []
  if train_config.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(train_config.grad_clip))
  chain.append(optax.adamw(learning_rate_schedule(train_config), b1=train_config.b1,
                           b2=train_config.b2, eps=train_config.eps,
                           weight_decay=train_config.weight_decay))
  return optax.chain(*chain)
