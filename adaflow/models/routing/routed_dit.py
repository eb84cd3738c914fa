"""DiffCR token routing (You et al., arXiv 2412.16822): layer- and timestep-adaptive, differentiable
token-keep ratios on top of the DiT backbone, without a second copy of the block code.

Per block i (the block itself is `adaflow.models.dit.DiTBlock`, run by `RoutedDiT.run_blocks`):

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
block (XLA compiles every bin's branch and executes exactly one) — that is the speed-up. With
identical blocks the layers run as one scanned body, so the bins' branches are compiled once for
the whole depth, not once per layer. The sampler reads the snapped ratios from the trained
parameters when it is built (`RoutingSpec.snapped`, `ComposedGenerator.specialize`): then only the
bins they use are compiled (a layer with one bin for every region has no switch). A
non-learned fixed ratio (`routing.fixed_ratio`) uses the gathered static-k path in training too.

Mixed t in a batch. Training: per example (above). Inference: the region comes from `t[0]` (an
ODE step shares one t across the batch), so `mode="infer"` assumes one t per call, as every
sampler here does.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.models import layers
from adaflow.models.dit import DiT
from adaflow.models.routing.ratios import bin_pair, clamp_ratio, region_index, snap_index
from adaflow.models.routing.spec import RoutingSpec
from adaflow.models.routing.tokens import masked_block, num_kept, routed_block, token_rank

MODES = ("train", "infer", "dense")


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
    table = self.routing.snapped
    if table is not None and (len(table) != len(self.block_specs) or any(
        len(row) != self.routing.num_regions or not set(row) <= set(self.routing.bins) for row in table)):
      raise ValueError(f"RoutingSpec.snapped must be [depth={len(self.block_specs)}][R={self.routing.num_regions}] "
                       f"ratios from routing.bins {self.routing.bins}, got {table}")
    self.routers = [_router(name=f"router_{i}") for i in range(len(self.block_specs))]
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

  @classmethod
  def from_dit(cls, dit: DiT, routing: RoutingSpec) -> "RoutedDiT":
    """The routed model with the fields of `dit` (a DiT of `dit_from_config`)."""
    fields = (f.name for f in dataclasses.fields(DiT) if f.init and f.name not in ("parent", "name"))
    return cls(**{k: getattr(dit, k) for k in fields}, routing=routing)

  def run_blocks(self, tokens, c, t, mode: str = "infer"):
    """tokens [B, N, D]; c [B, D]; t [B] -> tokens [B, N, D] (`DiT.__call__` passes `mode`, see the
    class docstring).

    Sampling ("infer") with identical blocks (`can_scan`) runs ONE scanned layer body (block +
    router + the bin switch, the layer's row of ratios as a scanned input): the program holds one
    block body per ratio bin whatever the depth, instead of one per bin and layer (the testbed's
    routed sampler compiles in 2.5x dense's time instead of 4.8x: experiments/results/
    compile_methods.md). Training keeps the per-layer loop: its two masked blocks per layer
    compile as fast as dense's step there (a scan saves nothing on XLA:CPU, compile.md). Pruned
    (uneven) blocks keep the loop. Same function either way (tests/test_routing.py)."""
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "dense":
      return super().run_blocks(tokens, c, t)
    ratios = self.ratios()
    if mode == "infer" and self.can_scan():
      block, router = self.unbound_block(), _router(parent=None)
      bins, branch = self._inference_branches(ratios, range(len(self.block_specs)))

      def layer(x, xs):
        block_p, router_p, branch_row = xs
        w = jax.nn.sigmoid(router.apply({"params": router_p}, x)[..., 0])
        run = lambda *a, **kw: block.apply({"params": block_p}, *a, **kw)
        return self._route_infer(t, bins, branch_row, run, x, c, w, _switch_over_function)

      return self.scan_layers(layer, tokens, (self.stacked_params("block"), self.stacked_params("router"), branch))
    for i, block in enumerate(self.block_modules):
      w = self.router_weights(i, tokens)
      if mode == "train":
        tokens = self._route_train(t, ratios[i], block, tokens, c, w)
      else:
        bins, branch = self._inference_branches(ratios, (i,))
        tokens = self._route_infer(t, bins, branch[0], block, tokens, c, w, nn.switch)
    return tokens

  def _inference_branches(self, ratios: jax.Array, layer_ids: Sequence[int]) -> tuple[tuple[float, ...], jax.Array]:
    """(bins, branch): the ratio bins sampling compiles a block branch for, and per layer of
    `layer_ids` and timestep region the index of its branch [len(layer_ids), R] int32.

    With `routing.snapped` (the snapped ratios read from trained parameters when the sampler is
    built, `ComposedGenerator.specialize`) these are static: only the bins those layers use (a
    layer whose regions share one bin needs no switch). Without it every bin is compiled and the
    traced ratios [depth, R] pick one on device. A fixed ratio is one bin."""
    s = self.routing
    rows = list(layer_ids)
    if not s.learned:
      return (s.fixed_ratio,), jnp.zeros((len(rows), s.num_regions), jnp.int32)
    if s.snapped is None:
      return s.bins, snap_index(ratios[jnp.asarray(rows, jnp.int32)], s.bins)
    used = tuple(sorted({s.snapped[i][r] for i in rows for r in range(s.num_regions)}))
    return used, jnp.asarray([[used.index(b) for b in s.snapped[i]] for i in rows], jnp.int32)

  def _route_train(self, t, ratio_row, block, tokens, c, w):
    """One routed layer in training: tokens [B, N, D] -> [B, N, D] through the bound `block` on
    the tokens that router weights w [B, N] keep, with this layer's ratios `ratio_row` [R] (each
    example's region's; the two neighbouring bins interpolated at full width, masked)."""
    s = self.routing
    n = tokens.shape[1]
    if not s.learned:
      return routed_block(block, tokens, c, w, num_kept(s.fixed_ratio, n), s.scale)
    rho = ratio_row[region_index(t, s.boundaries)]               # [B]: each example's region
    j, lam = bin_pair(rho, s.bins)
    ks = jnp.asarray([num_kept(b, n) for b in s.bins], jnp.int32)
    rank = token_rank(w)
    y1 = masked_block(block, tokens, c, w, rank < ks[j][:, None], s.scale)
    y2 = masked_block(block, tokens, c, w, rank < ks[j + 1][:, None], s.scale)
    lam = lam[:, None, None]
    return lam * y1 + (1.0 - lam) * y2

  def _route_infer(self, t, bins: Sequence[float], branch_row, block, tokens, c, w, switch):
    """One routed layer in sampling: tokens [B, N, D] -> [B, N, D] through `block` (a bound block
    or a function of its params) on the top-k tokens of router weights w [B, N], k from the bin
    `bins[branch_row[region of t[0]]]` (`branch_row` [R] int32, `_inference_branches`). `switch` is
    `nn.switch` for a bound block, `_switch_over_function` inside the scanned body."""
    n = tokens.shape[1]
    branches = [functools.partial(routed_block, k=num_kept(ratio, n), scale_mode=self.routing.scale) for ratio in bins]
    if len(branches) == 1:
      return branches[0](block, tokens, c, w)
    return switch(branch_row[region_index(t[0], self.routing.boundaries)], branches, block, tokens, c, w)


def _router(**kw) -> layers.Dense:
  """Router_i: Linear(D -> 1, no bias), float32. Bound as `router_{i}` in setup; unbound
  (`parent=None`) it is applied with one layer's slice of the stacked router params."""
  return layers.Dense(1, axes=("embed", None), dtype=jnp.float32, use_bias=False,
                      kernel_init=nn.initializers.normal(0.02), **kw)


def _switch_over_function(index, branches, block, *operands):
  """`nn.switch`'s signature for a block that is a function (closing over its params), which
  `jax.lax.switch` cannot take as an operand: each branch gets it bound."""
  return jax.lax.switch(index, [functools.partial(branch, block) for branch in branches], *operands)


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
