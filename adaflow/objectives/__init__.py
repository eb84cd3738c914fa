"""Objectives: what one training step optimises, one module per model family. The loop in
`adaflow.train` is written once and calls an objective. The DiT family has ONE objective, the
composed model's (adaflow.compose.objective; its loss is `flow_loss`), and every DiT method is a
preset of it (adaflow.methods); the step policy and the DQ models have their own here.
Objectives do no I/O of other runs: what they need (a frozen generator, a tokenizer, a
classifier) is passed to their constructors by the method table (`adaflow.methods.build_objective`).

An objective provides (the typed interface is `adaflow.objectives.base.Objective`):
  validate(config, info) -> None, a ValueError naming the field (called by whoever builds it)
  init(rng) -> boxed Flax variables (logical axis names attached, for sharding)
  loss(params, batch, rng) -> (scalar loss, metrics) or, with has_side, (loss, (metrics, side))
  after_update(params, side) -> params (non-gradient updates after the optimizer step)
  sampler -> the run's sampler: `generate(params, rng, labels, **sample_kw)` -> images
      [B, H, W, C] in about [-1, 1]; the families that sample their own way (DQ-VAE /
      DQ-Transformer, the AdaDiff step policy) are their own, the DiT family's is ComposedGenerator
"""
