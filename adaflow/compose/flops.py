"""Analytic network FLOPs per sampled image, one count for every method and every composition.

Counted as `adaflow.prune.budget` counts (matmuls only, 2 m n k; checked against XLA there): per
network evaluation at stage s with N_s tokens, the fixed part (patch embedding, timestep MLP,
final adaLN, head) + per block its adaLN and its attention / MLP on the tokens it processes. A
routed block processes k = ceil(bin * N_s) tokens, the bin being rho of (layer, timestep region of
the evaluation's t) snapped to the nearest bin, exactly what "infer" mode runs; its router costs
2 N_s D. Each Euler, AB2 or SDE step is one evaluation (Heun two: at t and t_next), doubled by CFG
(scale != 1), on the grid the generator samples with (`sample.edges`), each evaluation by the
network that runs it (`ComposedGenerator.runs`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from adaflow.compose import model as model_lib
from adaflow.models.routing.ratios import ratio_table, region_index, snapped_table
from adaflow.models.routing.tokens import num_kept
from adaflow.prune import budget as budget_lib


def network_flops(model, stage: int, kept: Optional[Sequence[int]] = None, routed: bool = False) -> int:
  """One image through `model` at `stage`; `kept[i]` tokens through block i (None = all)."""
  n = budget_lib.model_tokens(model, stage)
  d, hd = model.hidden_size, model.head_dim
  f = budget_lib.fixed_flops(model, stage)
  for i, spec in enumerate(model.block_specs):
    f += budget_lib.block_flops(d, n if kept is None else int(kept[i]), hd, spec)
    if routed:
      f += 2 * n * d
  return int(f)


def _kept(generator, params, g: int, stage: int, t: float) -> Optional[list[int]]:
  if not generator.routed:
    return None
  spec = generator.spec.routing
  model = generator.models[g]
  n = budget_lib.model_tokens(model, stage)
  table = snapped_table(ratio_table(model_lib.group_params(params, generator.spec, g), spec), spec)
  r = int(region_index(jnp.float32(t), spec.boundaries))
  return [num_kept(float(table[i, r]), n) for i in range(table.shape[0])]


def sampling_flops(generator, params: Any, steps: int, method: str, cfg_scale: float,
                   grid: Optional[np.ndarray] = None) -> float:
  """Network FLOPs to sample one image with a ComposedGenerator (any subset)."""
  scales = generator.stage_cfg_scales(cfg_scale)
  total = 0.0
  for run in generator.runs(generator.sampling_grid(steps, grid)):
    sub32 = np.asarray(run.grid, np.float32)
    for a, b in zip(sub32[:-1], sub32[1:]):
      # euler, ab2 (multistep), sde: one call per step, at its start; heun also one at its end
      for t, (g, s) in (((a, run.start), (b, run.end)) if method == "heun" else ((a, run.start),)):
        mult = 1 if scales[s] == 1.0 else 2
        total += mult * network_flops(generator.models[g], s, _kept(generator, params, g, s, float(t)), generator.routed)
  return float(total)


def selector_flops(generator, params: Any, actions: Sequence[tuple[str, int]], actions_per_image: Sequence[int],
                   cfg_scale: float) -> float:
  """Mean FLOPs per image when image i is sampled with the (solver, steps) action
  actions[actions_per_image[i]] (AdaDiff)."""
  counts = {int(a): int(c) for a, c in zip(*np.unique(np.asarray(actions_per_image), return_counts=True))}
  n = sum(counts.values())
  return float(sum(c * sampling_flops(generator, params, actions[a][1], actions[a][0], cfg_scale)
                   for a, c in counts.items()) / n)
