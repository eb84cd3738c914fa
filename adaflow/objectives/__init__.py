"""Objectives: what one training step optimises, one module per objective. The loop in
`adaflow.train` is written once and calls an objective; each method adds an objective (and a
config), never a second loop. Objectives do no I/O of other runs: what they need (a frozen
generator, a tokenizer, a classifier) is passed to their constructors by the train layer's
registry (`adaflow.train.registry.build_objective`).

An objective provides (the typed interface is `adaflow.objectives.base.Objective`):
  validate(config, info) -> None, a ValueError naming the field (called by whoever builds it)
  init(rng) -> boxed Flax variables (logical axis names attached, for sharding)
  loss(params, batch, rng) -> (scalar loss, metrics) or, with has_side, (loss, (metrics, side))
  after_update(params, side) -> params (non-gradient updates after the optimizer step)
  generate(params, rng, labels, **sample_kw) -> images [B, H, W, C] in about [-1, 1], for the
      families that sample their own way (DQ-VAE / DQ-Transformer, the AdaDiff step policy); the
      DiT family's loss is `flow_loss` and its sampler `adaflow.compose.generator_for`
"""
