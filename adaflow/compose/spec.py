"""`config.compose`: which methods a composed sampler uses, validated before anything is compiled.

    config.compose.ppflow    True: PPFlow patch stages from `compose.stages` (pixels, as model.stages)
    config.compose.routing   True: DiffCR token routing with `config.routing`
    config.compose.grouped   True: timestep-grouped pruned sub-models: `compose.group_blocks` (per group,
                             [[heads, mlp], ...]) and `compose.group_edges` (N + 1 times, 0 .. 1); the
                             recipe fills both from its pruning result
    config.compose.selector  True: the AdaDiff step policy over `config.selector.actions` (or `step_set`)

Any subset may be on (none = the dense DiT). The stages live in `compose.stages`, not
`model.stages`, because `model.stages` belongs to objective 'ppflow'.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from adaflow.models.routing import spec as routing_spec
from adaflow.models.routing.tokens import num_kept
from adaflow.models.dit import BlockSpec
from adaflow.models.patchify import stage_grid
from adaflow.models.ppflow import PatchSchedule, parse_stages
from adaflow.models.step_selector import parse_actions

METHODS = ("ppflow", "routing", "grouped", "selector")


@dataclasses.dataclass(frozen=True)
class ComposeSpec:
  """The validated composition. None = that method is off."""
  schedule: Optional[PatchSchedule] = None
  routing: Optional[routing_spec.RoutingSpec] = None
  blocks_per_group: Optional[tuple[tuple[BlockSpec, ...], ...]] = None
  edges: Optional[tuple[float, ...]] = None
  actions: Optional[tuple[tuple[str, int], ...]] = None     # the step policy's (solver, steps)
  cfg_scales: Optional[tuple[float, ...]] = None

  @property
  def num_stages(self) -> int:
    return 1 if self.schedule is None else self.schedule.num_stages

  @property
  def num_groups(self) -> int:
    return 1 if self.blocks_per_group is None else len(self.blocks_per_group)

  @property
  def enabled(self) -> tuple[str, ...]:
    on = {"ppflow": self.schedule is not None, "routing": self.routing is not None,
          "grouped": self.blocks_per_group is not None, "selector": self.actions is not None}
    return tuple(m for m in METHODS if on[m])

  def name(self) -> str:
    return "+".join(self.enabled) or "dense"


def _err(field: str, msg: str) -> ValueError:
  return ValueError(f"config.{field}: {msg}")


def _flag(c, name: str) -> bool:
  v = c[name]
  if not isinstance(v, (bool, np.bool_)):
    raise _err(f"compose.{name}", f"must be True or False, got {v!r}")
  return bool(v)


def stage_tokens(model_config, image_shape: Sequence[int], groups: Sequence[tuple[int, int]]) -> list[int]:
  """Token count of each stage grouping for `model.patch_size` on images [H, W, C]."""
  size = (int(image_shape[0]), int(image_shape[1]))
  return [r * c for r, c in (stage_grid(size, int(model_config.patch_size), g) for g in groups)]


def check_routing_fits(spec: routing_spec.RoutingSpec, tokens: Sequence[int]) -> None:
  """Every bin must keep at least one whole token of every stage, and on the finest stage (the last,
  most tokens) the bins must give distinct kept counts (otherwise two bins are the same program)."""
  for s, n in enumerate(tokens):
    for b in spec.bins:
      if b * n < 1.0 - 1e-9:
        raise _err("routing.bins", f"bin {b} keeps {b * n:.2f} < 1 of the {n} tokens of PPFlow stage {s} "
                   f"(compose.stages); raise the lowest bin to >= {1.0 / n:.3f} or use larger images/smaller patches")
  n = tokens[-1]
  ks = [num_kept(b, n) for b in spec.bins]
  if len(set(ks)) != len(ks):
    raise _err("routing.bins", f"bins {spec.bins} keep {ks} of the {n} tokens of the finest stage: two bins keep the "
               "same count; use fewer, more widely spaced bins")


def _parse_blocks(c, model_config) -> tuple[tuple[BlockSpec, ...], ...]:
  blocks = c.group_blocks
  if blocks is None or len(blocks) == 0:
    raise _err("compose.group_blocks", "compose.grouped is on but no pruned structures are given; the recipe's "
               "pruning stage sets them (adaflow compose), or turn compose.grouped off")
  heads, mlp = int(model_config.num_heads), int(model_config.hidden_size * model_config.mlp_ratio)
  depth = int(model_config.depth)
  out = []
  for g, group in enumerate(blocks):
    specs = []
    try:
      for b in group:
        h_, m_ = b
        specs.append(BlockSpec(int(h_), int(m_)))
    except (TypeError, ValueError):
      raise _err(f"compose.group_blocks[{g}]", f"must be a list of (heads, mlp_dim) pairs, got {group!r}") from None
    if not specs or len(specs) > depth:
      raise _err(f"compose.group_blocks[{g}]", f"needs 1..{depth} blocks (model.depth), got {len(specs)}")
    for s in specs:
      if not (0 <= s.num_heads <= heads and 0 <= s.mlp_dim <= mlp) or (s.num_heads == 0 and s.mlp_dim == 0):
        raise _err(f"compose.group_blocks[{g}]", f"block {s} must have 0..{heads} heads and 0..{mlp} MLP channels "
                   "(not both 0): a pruned structure of the base model")
    out.append(tuple(specs))
  return tuple(out)


def _parse_edges(c, n: int) -> tuple[float, ...]:
  try:
    edges = tuple(float(e) for e in c.group_edges)
  except (TypeError, ValueError):
    raise _err("compose.group_edges", f"must be {n + 1} numbers from 0 to 1, got {c.group_edges!r}") from None
  if len(edges) != n + 1:
    raise _err("compose.group_edges", f"{n} groups (compose.group_blocks) need {n + 1} edges, got {len(edges)}: "
               "group_blocks and group_edges must come from the same pruning result")
  if edges[0] != 0.0 or edges[-1] != 1.0 or any(b <= a for a, b in zip(edges, edges[1:])):
    raise _err("compose.group_edges", f"must increase strictly from 0.0 to 1.0, got {edges}")
  return edges


def spec_from_config(config, info) -> ComposeSpec:
  """Validated ComposeSpec of `config.compose` for the dataset `info` (image shape); no compilation."""
  c = config.compose
  on = {m: _flag(c, m) for m in METHODS}
  m = config.model
  if config.model.stages is not None:
    raise _err("model.stages", "a composed model takes its PPFlow schedule from config.compose.stages (with "
               "compose.ppflow=True); remove model.stages")
  if tuple(tuple(g) for g in m.stage_groups) != ((1, 1),):
    raise _err("model.stage_groups", "a composed model derives its stage groupings from compose.stages; leave "
               "model.stage_groups at ((1, 1),)")
  schedule = None
  if on["ppflow"]:
    try:
      schedule = parse_stages(c.stages, m.patch_size, info.image_shape[:2])
    except ValueError as e:
      raise ValueError(str(e).replace("config.model.stages", "config.compose.stages")) from None
  elif c.stages:
    raise _err("compose.stages", "is set but compose.ppflow is False; set compose.ppflow=True or clear compose.stages")
  groups = schedule.groups if schedule is not None else ((1, 1),)
  scales = config.sample.cfg_scales
  cfg_scales = None
  if scales is not None:
    if schedule is None:
      raise _err("sample.cfg_scales", "per-stage CFG scales need PPFlow stages (compose.ppflow); use sample.cfg_scale")
    if len(scales) != schedule.num_stages or any(float(s) < 0 for s in scales):
      raise _err("sample.cfg_scales", f"needs {schedule.num_stages} non-negative scales (one per compose.stages "
                 f"stage), got {list(scales)}")
    cfg_scales = tuple(float(s) for s in scales)
  rspec = None
  if on["routing"]:
    rspec = routing_spec.spec_from_config(config)
    check_routing_fits(rspec, stage_tokens(m, info.image_shape, groups))
  blocks = edges = None
  if on["grouped"]:
    blocks = _parse_blocks(c, m)
    edges = _parse_edges(c, len(blocks))
  elif c.group_blocks or c.group_edges:
    raise _err("compose.group_blocks", "pruned structures are given but compose.grouped is False; turn it on or "
               "clear compose.group_blocks / compose.group_edges")
  actions = None
  if on["selector"]:
    s = config.selector
    actions = parse_actions(s.actions, s.step_set, s.method or config.sample.method)
  return ComposeSpec(schedule=schedule, routing=rspec, blocks_per_group=blocks, edges=edges, actions=actions,
                     cfg_scales=cfg_scales)


def validate_composed(config, info) -> None:
  """objective 'composed' (adaflow.compose.objective calls this): `config.compose` must describe a
  valid generator; the batch must cover every (group x stage) cell. Checked before anything is compiled."""
  if info is None:
    return
  spec = spec_from_config(config, info)
  if spec.actions is not None:
    raise _err("compose.selector", "must be False for objective 'composed' (the step policy is trained separately "
               "with objective 'step_selector' on top of the composed generator; adaflow compose does both)")
  cells = spec.num_groups + spec.num_stages - 1      # upper bound on the non-empty (group x stage) cells
  if int(config.train.batch_size) < cells:
    raise _err("train.batch_size", f"{config.train.batch_size} is smaller than the {cells} (group x stage) cells "
               "of the composed model; each needs at least one example per batch")
