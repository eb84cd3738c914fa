"""FLOPs of (pruned) DiTs, counted analytically, and the progressive per-group budget.

FLOPs are forward FLOPs of ONE image at one patch stage, counting every matmul as 2*m*n*k
(the convention of XLA's `cost_analysis`; elementwise work — LayerNorm, softmax, GELU, adds — is
not counted, which is what makes the analytic count a little below XLA's total; tests check the
two agree within a few percent). With N tokens, D hidden, hd head dim, P = C*p*p*gh*gw:

  patch embed 2 N P D; timestep MLP 2 (256 D + D D); per block: adaLN 2 D (6 D),
  attention with h heads 2 N D (3 h hd) + 4 h N^2 hd + 2 N (h hd) D, MLP with m channels 4 N D m;
  final adaLN 2 D (2 D) + head 2 N D P_out.

Budget (arXiv 2312.13307): for groups i = 1..N, `budget(i) = (i/N + (N - i)/N * k) * F`, F the
base model's FLOPs and k in (0, 1) the smallest fraction; budget(N) = F. `largest` says which end
of the time axis gets the full-size model: "data" (the last group, t near 1, high SNR) or
"noise" (group 0, t near 0).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from adaflow.models.dit import BlockSpec, DiT
from adaflow.models.patchify import stage_grid

LARGEST = ("data", "noise")


def block_flops(hidden: int, tokens: int, head_dim: int, spec: BlockSpec) -> int:
  """Forward matmul FLOPs of one block with `spec` on [1, tokens, hidden]."""
  d, n, hd = hidden, tokens, head_dim
  f = 2 * d * 6 * d
  h = spec.num_heads
  if h:
    f += 2 * n * d * 3 * h * hd + 4 * h * n * n * hd + 2 * n * h * hd * d
  if spec.mlp_dim:
    f += 4 * n * d * spec.mlp_dim
  return int(f)


def head_flops(hidden: int, tokens: int, head_dim: int) -> int:
  """FLOPs of one attention head (what removing a head saves)."""
  return block_flops(hidden, tokens, head_dim, BlockSpec(1, 0)) - block_flops(hidden, tokens, head_dim, BlockSpec(0, 0))


def channel_flops(hidden: int, tokens: int) -> int:
  """FLOPs of one MLP hidden channel."""
  return 4 * tokens * hidden


def model_tokens(model: DiT, stage: int = 0) -> int:
  gh, gw = model.stage_groups[stage]
  r, c = stage_grid(tuple(model.image_size), model.patch_size, (gh, gw))
  return int(r * c)


def fixed_flops(model: DiT, stage: int = 0) -> int:
  """FLOPs outside the blocks (embedding, timestep MLP, adaLN of the final layer, output head)."""
  d, n = model.hidden_size, model_tokens(model, stage)
  gh, gw = model.stage_groups[stage]
  p = model.patch_size
  pin = model.in_channels * p * p * gh * gw
  pout = model.in_channels * (2 if model.learn_sigma else 1) * p * p * gh * gw
  return int(2 * n * pin * d + 2 * (256 * d + d * d) + 2 * d * 2 * d + 2 * n * d * pout)


def model_flops(model: DiT, blocks: Sequence[BlockSpec] | None = None, stage: int = 0) -> int:
  """Forward FLOPs of one image through `model` (or through `model` with `blocks` instead)."""
  specs = model.block_specs if blocks is None else tuple(blocks)
  n = model_tokens(model, stage)
  return fixed_flops(model, stage) + sum(block_flops(model.hidden_size, n, model.head_dim, s) for s in specs)


def check_num_groups(num_groups) -> int:
  """`num_groups` as an int; ValueError naming `config.grouped.num_groups` unless it is an integer >= 1."""
  if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1:
    raise ValueError(f"config.grouped.num_groups: must be an integer >= 1, got {num_groups!r}")
  return int(num_groups)


def check_budget_args(num_groups, k, largest: str = "data") -> None:
  """ValueError naming the config field for an impossible (N, k, largest)."""
  check_num_groups(num_groups)
  if isinstance(k, bool) or not isinstance(k, (int, float, np.floating)) or not 0.0 < float(k) < 1.0:
    raise ValueError(f"config.grouped.k: the smallest budget fraction must be in (0, 1) "
                     f"(e.g. 0.5), got {k!r}")
  if largest not in LARGEST:
    raise ValueError(f"config.grouped.largest: must be one of {LARGEST} (which end of t gets the "
                     f"full-size model), got {largest!r}")


def budget_fractions(num_groups: int, k: float, largest: str = "data") -> np.ndarray:
  """[N] budget fractions of F, indexed by *time group* (group 0 = noisiest).
  `(i/N + (N-i)/N k)` for i = 1..N, placed so the full-size model sits at the `largest` end."""
  check_budget_args(num_groups, k, largest)
  n = int(num_groups)
  i = np.arange(1, n + 1, dtype=np.float64)
  frac = i / n + (n - i) / n * float(k)      # rising: smallest first
  return frac if largest == "data" else frac[::-1].copy()


def group_budgets(num_groups: int, k: float, base_flops: float, largest: str = "data") -> np.ndarray:
  """[N] FLOPs budgets per time group."""
  return budget_fractions(num_groups, k, largest) * float(base_flops)


def sampling_flops(group_flops: Sequence[float], group_per_step: Sequence[int], method: str,
                   cfg_scale: float) -> float:
  """Network FLOPs to sample one image: each step runs its group's model once (euler) or twice
  (heun), doubled by classifier-free guidance (cfg_scale != 1)."""
  nfe = 2 if method == "heun" else 1
  cfg = 1 if cfg_scale == 1.0 else 2
  return float(sum(group_flops[g] for g in group_per_step) * nfe * cfg)
