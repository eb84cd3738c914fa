"""The interface every objective implements (`Objective`) and the defaults of its optional
abilities (`ObjectiveBase`), so that callers ask an objective what it can do instead of probing
it with `hasattr`.

Shapes: batch {'image': [B, H, W, C] in [-1, 1], 'label': [B] int32}; params a Flax variable tree.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax


@runtime_checkable
class Objective(Protocol):
  """What the train loop (adaflow.train) calls. Built by `adaflow.methods.build_objective`,
  which runs `validate(config, info)` first and hands the constructor whatever must be loaded
  (frozen generator, tokenizer, classifier): constructors do no I/O."""

  num_classes: int
  # True when `loss` returns (loss, (metrics, side)): `side` is a pytree of non-gradient state
  # (EMA codebook statistics, a REINFORCE baseline) that `after_update` writes into the params.
  # False: `loss` returns (loss, metrics) and `after_update` receives side=None.
  has_side: bool

  @classmethod
  def validate(cls, config, info) -> None:
    """Raises one ValueError naming the config field, before anything is compiled; `info` is the
    dataset's DatasetInfo or None (then only the checks that need no image shape run)."""

  def init(self, rng: jax.Array) -> Any:
    """Boxed Flax variables (logical axis names attached, for sharding)."""

  def loss(self, params, batch, rng: jax.Array) -> tuple[jax.Array, Any]:
    """(scalar loss, metrics dict) or, with `has_side`, (scalar loss, (metrics dict, side))."""

  def after_update(self, params, side) -> Any:
    """Params after the optimizer step -> params with the non-gradient updates applied
    (projections, EMA statistics); called by the train step every step."""

  def describe_compute(self) -> str:
    """The start-up log line of what this objective's networks compute in (training and sampling)."""


class ObjectiveBase:
  """Defaults of an objective's optional abilities; objectives override what they have."""

  has_side = False
  # `adaflow sample` also draws the coarse/fine code maps (`images_and_maps`): the DQ objectives.
  has_maps = False

  @classmethod
  def validate(cls, config, info) -> None:
    del config, info

  def after_update(self, params, side):
    del side
    return params

  def merge_init_params(self, init_params, rng: jax.Array):
    """`--init` params (another run's, possibly a smaller tree) -> this objective's full tree."""
    del rng
    return init_params

  @staticmethod
  def use_init_workdir(config, workdir: str) -> bool:
    """`adaflow train --init <workdir>`: True when the objective takes the workdir itself (written
    into `config`), False when --init means "start from that run's parameters"."""
    del config, workdir
    return False

  @property
  def sampler(self):
    """The run's sampler: `generate(params, rng, labels, *, steps, method, cfg_scale)` and
    `sampling_record(steps, method, cfg_scale)` (what `generate` samples with, as eval.json and FID's
    result.json record it). The objectives that sample their own way (DQ, the step policy) are their
    own and define `sampling_record`; the DiT family's is its composed generator."""
    return self

  # The flow solver's settings (`steps`, `method`, `cfg_scale`; `adaflow sample --steps/--method/--cfg`)
  # choose how `generate` samples: True for the DiT family's composed generator; the objectives that
  # sample their own way (DQ, the step policy) ignore them, so those flags are refused there.
  uses_solver_settings = False

  def specialize(self, params):
    """The sampler to sample `params` with, specialized to what is static in them (the composed
    generator reads routing's snapped ratios; `adaflow.flow.driver.generate_images` calls this)."""
    del params
    return self

  def images_and_maps(self, params, rng: jax.Array, labels) -> tuple:
    raise ValueError(f"{type(self).__name__} has no code maps to show (has_maps is False)")
