"""`config.routing` -> `RoutingSpec`: the validated, static DiffCR routing settings (hashable: a
field of the Flax module). Every impossible setting is a ValueError naming the field."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from adaflow.models.routing.tokens import SCALE_MODES


@dataclasses.dataclass(frozen=True)
class RoutingSpec:
  """Static routing settings (hashable; a field of the Flax module)."""
  bins: tuple[float, ...]            # ascending
  boundaries: tuple[float, ...]      # R + 1 edges, 0 .. 1
  target: float = 0.75
  ratio_loss_weight: float = 0.3
  init_ratio: float = 1.0
  rho_min: float = 0.1
  rho_max: float = 1.0
  scale: str = "ste"
  fixed_ratio: float = 0.0
  ratio_lr_scale: float = 1.0
  # Sampling only: the snapped inference ratios [depth][R] read from trained parameters when the
  # sampler is built (`ComposedGenerator.specialize`), so that each layer compiles only the bins
  # it uses. None: every bin is compiled and the traced ratios choose on device. Never a config field.
  snapped: Optional[tuple[tuple[float, ...], ...]] = None

  @property
  def num_regions(self) -> int:
    return len(self.boundaries) - 1

  @property
  def learned(self) -> bool:
    return self.fixed_ratio <= 0


def _err(field: str, msg: str) -> ValueError:
  return ValueError(f"config.routing.{field}: {msg}")


def spec_from_config(config) -> RoutingSpec:
  """Validated `RoutingSpec` from `config.routing` (every field declared in
  `adaflow.config_defaults.routing_defaults`). Raises ValueError naming the field for impossible settings."""
  rc = config.routing
  try:
    bins = tuple(float(b) for b in rc.bins)
  except (TypeError, ValueError):
    raise _err("bins", f"must be a sequence of numbers, got {rc.bins!r}") from None
  if len(bins) < 2:
    raise _err("bins", f"needs at least two ratios (e.g. 1.0, 0.9, ..., 0.3), got {bins}")
  if any(not (0.0 < b <= 1.0) for b in bins):
    raise _err("bins", f"every ratio must be in (0, 1], got {bins}")
  if len(set(bins)) != len(bins):
    raise _err("bins", f"ratios must be distinct, got {bins}")
  if max(bins) != 1.0:
    raise _err("bins", f"must contain 1.0 (the uncompressed block), got {bins}")
  rho_min, rho_max = float(rc.rho_min), float(rc.rho_max)
  if not (0.0 < rho_min < rho_max <= 1.0):
    raise _err("rho_min", f"need 0 < rho_min < rho_max <= 1, got rho_min={rho_min}, rho_max={rho_max}")
  r = int(rc.num_regions)
  if rc.boundaries:
    edges = tuple(float(b) for b in rc.boundaries)
    if len(edges) < 2 or edges[0] != 0.0 or edges[-1] != 1.0:
      raise _err("boundaries", f"must be R + 1 edges starting at 0.0 and ending at 1.0, got {edges}")
    if any(b2 <= b1 for b1, b2 in zip(edges, edges[1:])):
      raise _err("boundaries", f"must be strictly increasing, got {edges}")
    if r != len(edges) - 1:
      raise _err("num_regions", f"is {r} but routing.boundaries has {len(edges) - 1} regions; make them agree "
                 "(or set boundaries=() for even regions)")
  else:
    if r < 1:
      raise _err("num_regions", f"must be >= 1, got {r}")
    edges = tuple(float(x) for x in np.linspace(0.0, 1.0, r + 1))
  target = float(rc.target)
  if not (min(bins) <= target <= 1.0) or not (rho_min <= target <= rho_max):
    raise _err("target", f"must lie in [min(bins), 1] = [{min(bins)}, 1] and in [rho_min, rho_max], got {target}")
  w = float(rc.ratio_loss_weight)
  if w < 0:
    raise _err("ratio_loss_weight", f"must be >= 0, got {w}")
  init = float(rc.init_ratio)
  if not (rho_min <= init <= rho_max):
    raise _err("init_ratio", f"must be in [rho_min, rho_max] = [{rho_min}, {rho_max}], got {init}")
  if rc.scale not in SCALE_MODES:
    raise _err("scale", f"must be one of {SCALE_MODES}, got {rc.scale!r}")
  fixed = float(rc.fixed_ratio)
  if fixed != 0.0 and not (0.0 < fixed <= 1.0):
    raise _err("fixed_ratio", f"must be 0 (learned ratios) or in (0, 1], got {fixed}")
  lr_scale = float(rc.ratio_lr_scale)
  if not lr_scale > 0:
    raise _err("ratio_lr_scale", f"must be > 0, got {lr_scale}")
  return RoutingSpec(bins=tuple(sorted(bins)), boundaries=edges, target=target, ratio_loss_weight=w,
                     init_ratio=init, rho_min=rho_min, rho_max=rho_max, scale=str(rc.scale), fixed_ratio=fixed,
                     ratio_lr_scale=lr_scale)


def validate_routing_config(config, info=None) -> None:
  """Checks `config.routing` for objective 'routed_flow_matching' (its objective's `validate` calls this).
  Every bin keeps at least one token (`num_kept`), so `info` adds no check."""
  spec_from_config(config)
