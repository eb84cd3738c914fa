"""Objectives: what one training step optimises, one module per model family. The loop in
`adaflow.train` is written once and calls an objective. The DiT family has ONE objective, the
composed model's (adaflow.compose.objective; its loss is `flow_loss`), and every DiT method is a
preset of it (adaflow.methods); the step policy and the DQ models have their own here.
Objectives do no I/O of other runs: what they need (a frozen generator, a tokenizer, a
classifier) is passed to their constructors by the method table (`adaflow.methods.build_objective`).
The interface: `adaflow.objectives.base` (`Objective`, and `ObjectiveBase`'s optional abilities).
"""
