"""DiffCR token routing (You et al., arXiv 2412.16822): layer- and timestep-adaptive, differentiable
token-keep ratios on top of the DiT backbone, without a second copy of the block code.

Per block i (the block itself is `adaflow.models.dit.DiTBlock`, wrapped via `DiT.block_fn`):

    w      = sigmoid(Router_i(tokens))                 [B, N]     Router_i: Linear(D -> 1, no bias)
    idx    = sort(top_k(w, k))                          [B, k]     original token order kept
    sel    = take_along_axis(tokens, idx)               [B, k, D]  masked gather
    out    = Block_i(sel, c, scales(w_sel))             [B, k, D]  attention among selected only
    tokens = tokens.at[idx].set(out)                    [B, N, D]  scatter; the rest skip the block

`k = ceil(rho * N)` with rho a *bin* (default 1.0, 0.9, ..., 0.3), so every shape is static.

Residual scaling (`routing.scale`). The router weight w of a kept token multiplies its residual
update through `DiTBlock(attn_scale=..., mlp_scale=...)`:
  * "ste" (default): both branches (attention and MLP) get s = 1 + (w - stop_gradient(w)). The
    forward value is exactly 1, so a kept token gets exactly the dense block's update (ratio 1.0
    reproduces the dense block bit for bit, and fine-tuning from a dense checkpoint starts at the
    dense model), while the router receives the gradient it would get if the update were
    multiplied by w. This is adaflow's variant, not the papers' formulation.
  * "weight": the MLP branch's update is multiplied by w = sigmoid(score), the attention branch is
    not, as in the DiffCR pseudocode (arXiv 2412.16822), which follows Mixture-of-Depths
    (arXiv 2404.02258). Changes the function at every ratio. With a fixed ratio
    (`routing.learn_ratio=False`) this is the Mixture-of-Depths baseline; with "ste" a fixed ratio
    is plain top-k token skipping with a straight-through router, not MoD.

Learnable ratios. `rho` is a Flax param [depth, R] (one scalar per layer and timestep region;
the ratio is `routing.ratio_lr_scale * rho`, so that Adam, whose steps are ~lr whatever the
gradient scale, can move ratios faster than weights), initialised to `routing.init_ratio`
(1.0 = no compression) and projected onto
[rho_min, rho_max] = [0.1, 1] after every optimizer step (`project_ratios`; the forward pass also
clamps with a straight-through clip). Timestep regions: R contiguous ranges of t given by
`routing.boundaries` (default: R = `routing.num_regions` even ranges of [0, 1]); region r holds
t in [b_r, b_{r+1}) (t = 1 belongs to the last region): the buckets of `flow.TimePartition`.

Training (differentiable ratio). With bins b1 < rho <= b2 the two neighbours of rho, a block
returns `lam * y(b1) + (1 - lam) * y(b2)`, `lam = (b2 - rho) / (b2 - b1)`, so d out / d rho =
(y(b2) - y(b1)) / (b2 - b1) != 0. rho below the lowest bin is clamped to it (no compute below the
lowest bin; the ratio loss still sees the clamped-to-[rho_min, rho_max] value).

Compile-per-pair vs evaluate-all-bins (the trade-off, and the choice made here). rho is a traced
parameter, so which pair is active is only known on device. (a) Evaluating all bins every step and
selecting costs sum(bins) = 5.2 dense blocks (default bins) in one program. (b) A `lax.switch` per
block over the bin pairs with gathered static-k branches executes only two routed blocks, but the
program holds (bins - 1) * 2 block copies per layer and per timestep region (regions need static
slices of the batch): on this CPU a depth-2 model already took minutes to compile, far too slow.
(c) Our choice: in training the two bin outputs are computed *masked at full width*: the block
runs on all N tokens with an attention key mask that keeps only the top-k(b) tokens, and only the
kept tokens take the update (`jnp.where`). Because the DiT has no per-block position information,
this is mathematically identical to gathering the k tokens (tested against the gathered path),
while k may be a traced, per-example value. So one compiled program, one forward pass for a batch
with mixed timesteps (each example uses the rho of its own region), at a fixed training cost of two
full-width blocks per layer (~2x a dense step, independent of the number of bins). Inference snaps
rho to the nearest bin and uses the *gathered* path with static k: a `lax.switch` over the bins per
block (XLA compiles every bin's branch once and executes exactly one) — that is the speed-up. A
non-learned fixed ratio (`routing.fixed_ratio`) uses the gathered static-k path in training too.

Mixed t in a batch. Training: per example (above). Inference: the region comes from `t[0]` (an
ODE step shares one t across the batch), so `mode="infer"` assumes one t per call, as every
sampler here does.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.flow.partition import TimePartition
from adaflow.models import layers
from adaflow.models.dit import DiT, dit_from_config

SCALE_MODES = ("ste", "weight")
MODES = ("train", "infer", "dense")


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

  @property
  def num_regions(self) -> int:
    return len(self.boundaries) - 1

  @property
  def partition(self) -> TimePartition:
    """The timestep regions as buckets of flow time."""
    return TimePartition(self.boundaries)

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
  """Checks `config.routing` for objective 'routed_flow_matching' (its objective's `validate` calls this)."""
  spec_from_config(config)
  if info is not None:
    n = _min_tokens(config, info)
    if n is not None and num_kept(min(spec_from_config(config).bins), n) < 1:
      raise _err("bins", f"the lowest bin keeps no token of {n}")


def _min_tokens(config, info) -> Optional[int]:
  m = config.model
  h, w, _ = info.image_shape
  p = m.patch_size
  counts = [(h // (p * g[0])) * (w // (p * g[1])) for g in m.stage_groups]
  return min(counts) if counts else None


# ---- static helpers ---------------------------------------------------------------------------

def num_kept(ratio: float, n: int) -> int:
  """k = ceil(ratio * n) tokens kept (at least 1; a tolerance absorbs float error, 0.3*10 -> 3)."""
  return max(1, min(n, int(math.ceil(ratio * n - 1e-6))))


def region_index(t: jax.Array, boundaries: Sequence[float]) -> jax.Array:
  """t: [...] in [0, 1] -> region [...] int32; region r holds t in [b_r, b_{r+1})."""
  return TimePartition(tuple(boundaries)).index(jnp.asarray(t))


def bin_pair(rho: jax.Array, bins: Sequence[float]) -> tuple[jax.Array, jax.Array]:
  """rho scalar -> (pair index j, lam): bins[j] < rho <= bins[j+1], lam = (b2 - rho)/(b2 - b1).
  rho below the lowest bin is clamped to it (lam = 1 on the lowest bin)."""
  b = jnp.asarray(bins, jnp.float32)
  r = jnp.clip(rho, b[0], b[-1])
  j = jnp.clip(jnp.searchsorted(b, r, side="left") - 1, 0, len(bins) - 2)
  b1, b2 = b[j], b[j + 1]
  return j.astype(jnp.int32), (b2 - r) / (b2 - b1)


def snap_index(rho: jax.Array, bins: Sequence[float]) -> jax.Array:
  """Index of the bin nearest to rho (ties -> the larger ratio, i.e. keep more tokens)."""
  b = jnp.asarray(bins, jnp.float32)
  d = jnp.abs(b - rho[..., None])
  # argmin returns the first minimum; search from the top so ties go to the larger bin.
  return (len(bins) - 1 - jnp.argmin(d[..., ::-1], axis=-1)).astype(jnp.int32)


def clamp_ratio(rho: jax.Array, lo: float, hi: float) -> jax.Array:
  """Clip to [lo, hi] in the forward pass, identity gradient (rho is also projected after each
  optimizer step, so the two agree during training)."""
  return rho + jax.lax.stop_gradient(jnp.clip(rho, lo, hi) - rho)


def top_k_indices(w: jax.Array, k: int) -> jax.Array:
  """w: [B, N] -> indices [B, k] of the k largest weights, sorted ascending (original order)."""
  chex.assert_rank(w, 2)
  _, idx = jax.lax.top_k(w, k)
  return jnp.sort(idx, axis=-1)


def gather_tokens(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x: [B, N, ...], idx: [B, k] -> [B, k, ...] (masked gather)."""
  idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, idx, axis=1)


def scatter_tokens(x: jax.Array, idx: jax.Array, y: jax.Array) -> jax.Array:
  """Writes y [B, k, D] into x [B, N, D] at idx [B, k]; other tokens of x are unchanged."""
  chex.assert_equal_shape_prefix([idx, y], 2)
  rows = jnp.arange(x.shape[0])[:, None]
  return x.at[rows, idx].set(y.astype(x.dtype), unique_indices=True, indices_are_sorted=True)


def residual_scales(w: jax.Array, mode: str) -> dict:
  """Router weights [B, k] -> the block's residual multipliers {attn_scale, mlp_scale}: [B, k, 1]
  each, or absent for a branch that is not scaled (see module docstring)."""
  if mode == "ste":
    s = (1.0 + (w - jax.lax.stop_gradient(w)))[..., None]
    return {"attn_scale": s, "mlp_scale": s}
  if mode == "weight":
    return {"mlp_scale": w[..., None]}
  raise ValueError(f"config.routing.scale must be one of {SCALE_MODES}, got {mode!r}")


def routed_block(block, x: jax.Array, c: jax.Array, w: jax.Array, k: int, scale_mode: str) -> jax.Array:
  """Runs `block` on the top-k tokens of x by router weight w and scatters back.

  x: [B, N, D]; c: [B, D]; w: [B, N] in (0, 1); k static -> [B, N, D]. With k == N no gather or
  scatter is emitted (every token is kept, in order)."""
  n = x.shape[1]
  if k >= n:
    return block(x, c, **residual_scales(w, scale_mode))
  idx = top_k_indices(w, k)
  sel = gather_tokens(x, idx)
  out = block(sel, c, **residual_scales(gather_tokens(w, idx), scale_mode))
  return scatter_tokens(x, idx, out)


def token_rank(w: jax.Array) -> jax.Array:
  """w: [B, N] -> rank [B, N] int32 of each token in descending weight order (ties: lower index
  first, as `lax.top_k`), so `rank < k` is exactly the top-k set."""
  order = jnp.argsort(-w, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)


def masked_block(block, x: jax.Array, c: jax.Array, w: jax.Array, keep: jax.Array, scale_mode: str) -> jax.Array:
  """Full-width equivalent of `routed_block`: x [B, N, D], keep [B, N] bool (k may differ per
  example and be traced). Attention keys are restricted to kept tokens; only kept tokens take the
  update. Equal to gathering the kept tokens, running the block and scattering back."""
  out = block(x, c, **residual_scales(w, scale_mode), attn_mask=keep[:, None, None, :])
  return jnp.where(keep[..., None], out, x)


# ---- the routed DiT --------------------------------------------------------------------------

class RoutedDiT(DiT):
  """A `DiT` whose blocks run on router-selected tokens. Parameters = the DiT's (same names, so a
  dense checkpoint loads unchanged) + `router_{i}/kernel` [D, 1] (logical axes ('embed', None)) +
  `rho` [depth, R] (logical axes ('layers', 'regions'), replicated).

  `__call__(x, t, y, *, stage=0, mode="infer")`:
    mode "train": each example uses its region's rho; the two neighbouring bins are interpolated
      (masked full-width path, see the module docstring).
    mode "infer": region from t[0]; rho snapped to the nearest bin; one routed block per layer.
    mode "dense": the plain DiT (routers unused).
  """
  routing: Optional[RoutingSpec] = None

  def setup(self):
    super().setup()
    if self.routing is None:
      raise ValueError("RoutedDiT needs `routing` (a RoutingSpec from spec_from_config)")
    self.routers = [layers.dense(1, axes=("embed", None), dtype=jnp.float32, use_bias=False,
                                 kernel_init=nn.initializers.normal(0.02), name=f"router_{i}")
                    for i in range(len(self.block_specs))]
    self.rho = self.param("rho", nn.with_logical_partitioning(
        nn.initializers.constant(self.routing.init_ratio / self.routing.ratio_lr_scale), ("layers", "regions")),
        (len(self.block_specs), self.routing.num_regions), jnp.float32)

  def ratios(self) -> jax.Array:
    """Clamped ratios [depth, R] (the fixed ratio everywhere for the non-learned baseline)."""
    s = self.routing
    if not s.learned:
      return jnp.full(self.rho.shape, s.fixed_ratio, jnp.float32)
    return clamp_ratio(s.ratio_lr_scale * self.rho, s.rho_min, s.rho_max)

  def router_weights(self, i: int, tokens: jax.Array) -> jax.Array:
    """tokens [B, N, D] -> w [B, N] = sigmoid(Linear(D -> 1, no bias))."""
    return jax.nn.sigmoid(self.routers[i](tokens)[..., 0])

  def __call__(self, x, t, y, *, stage: int = 0, mode: str = "infer", block_fn=None):
    """x: [B, H, W, C]; t: [B]; y: [B] -> [B, H, W, C]. See the class docstring for `mode`."""
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if block_fn is not None:
      raise ValueError("RoutedDiT supplies its own block_fn")
    if mode == "dense":
      return super().__call__(x, t, y, stage=stage)
    s = self.routing
    ratios = self.ratios()

    def fn(i, block, tokens, c):
      n = tokens.shape[1]
      w = self.router_weights(i, tokens)
      if not s.learned:
        return routed_block(block, tokens, c, w, num_kept(s.fixed_ratio, n), s.scale)
      if mode == "train":
        rho = ratios[i][region_index(t, s.boundaries)]              # [B]: each example's region
        j, lam = bin_pair(rho, s.bins)
        ks = jnp.asarray([num_kept(b, n) for b in s.bins], jnp.int32)
        rank = token_rank(w)
        y1 = masked_block(block, tokens, c, w, rank < ks[j][:, None], s.scale)
        y2 = masked_block(block, tokens, c, w, rank < ks[j + 1][:, None], s.scale)
        lam = lam[:, None, None]
        return lam * y1 + (1.0 - lam) * y2
      b = snap_index(ratios[i][region_index(t[0], s.boundaries)], s.bins)
      branches = [self._bin_branch(ratio, n) for ratio in s.bins]
      return nn.switch(b, branches, block, tokens, c, w)

    return super().__call__(x, t, y, stage=stage, block_fn=fn)

  def _bin_branch(self, ratio: float, n: int):
    scale = self.routing.scale
    def branch(block, tokens, c, w):
      return routed_block(block, tokens, c, w, num_kept(ratio, n), scale)
    return branch


def routed_dit_from_config(config, image_shape: Sequence[int], num_classes: int) -> RoutedDiT:
  """RoutedDiT with the DiT fields of `config.model` and the routing of `config.routing`."""
  base = dit_from_config(config.model, image_shape, num_classes)
  fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(DiT) if f.init and f.name not in ("parent", "name")}
  return RoutedDiT(**fields, routing=spec_from_config(config))


# ---- parameter utilities ---------------------------------------------------------------------

def project_ratios(params: Any, spec: RoutingSpec) -> Any:
  """Projects `params['params']['rho']` onto [rho_min, rho_max] (after each optimizer step)."""
  p = dict(params)
  inner = dict(p["params"])
  inner["rho"] = jnp.clip(inner["rho"], spec.rho_min / spec.ratio_lr_scale, spec.rho_max / spec.ratio_lr_scale)
  p["params"] = inner
  return p


def ratio_loss(rho: jax.Array, spec: RoutingSpec) -> jax.Array:
  """(mean over layers and regions of the clamped rho - target)^2 (regions equally weighted).
  `rho` is the raw param [depth, R] (ratio = ratio_lr_scale * param)."""
  return jnp.square(jnp.mean(clamp_ratio(spec.ratio_lr_scale * rho, spec.rho_min, spec.rho_max)) - spec.target)


def merge_params(dense: Any, fresh: Any, path: str = "params") -> Any:
  """Fine-tuning from a dense checkpoint: every leaf of `fresh` (a freshly initialised routed
  tree) is replaced by the same-path leaf of `dense` when it exists (shapes must match); router
  and rho params, absent from a dense tree, keep their fresh initialisation."""
  if isinstance(fresh, dict) or hasattr(fresh, "items"):
    dense_d = dense if (isinstance(dense, dict) or hasattr(dense, "items")) else {}
    return {k: (merge_params(dense_d[k], v, f"{path}/{k}") if k in dense_d else v) for k, v in fresh.items()}
  d, f = np.shape(dense), np.shape(fresh)
  if d != f:
    raise ValueError(f"--init checkpoint: parameter {path} has shape {d}, the routed model needs {f}; "
                     "the dense run's config.model must match this config.model")
  return jnp.asarray(dense, jnp.asarray(fresh).dtype)


def ratio_table(params: Any, spec: RoutingSpec) -> np.ndarray:
  """Host array [depth, R] of the clamped learned ratios (the fixed ratio for the baseline)."""
  rho = spec.ratio_lr_scale * np.asarray(jax.device_get(params["params"]["rho"]), np.float32)
  if not spec.learned:
    return np.full(rho.shape, spec.fixed_ratio, np.float32)
  return np.clip(rho, spec.rho_min, spec.rho_max)


def snapped_table(table: np.ndarray, spec: RoutingSpec) -> np.ndarray:
  """Inference ratios [depth, R]: each entry snapped to the nearest bin (fixed ratio unchanged)."""
  if not spec.learned:
    return table
  return np.asarray(spec.bins)[np.asarray(snap_index(jnp.asarray(table), spec.bins))]

