"""DiT backbone (Peebles & Xie 2023) with adaLN-Zero, as a plain Flax module.

    tokens = StagePatchEmbed[stage](x) + pos[stage]                      [B, N, D]
    c      = TimestepEmbed(t * time_scale) + LabelEmbed(y) (+ level[stage])  [B, D]
    tokens = Block_i(tokens, c)  for i in 0..depth-1                   [B, N, D]
    out    = StageUnpatchify[stage](FinalLayer(tokens, c))            [B, H, W, C]

Labels `y` index a table of `num_classes + 1` rows; row `num_classes` is the null class used for
classifier-free guidance (the objective replaces labels by it with probability `class_dropout`).
An unconditional model is `num_classes = 0`: the table keeps one learned row, the null label 0 that
every input gets, so conditioning (c = t embedding + one learned vector) and the parameter layout
are those of every other model and every method runs unconditionally through the same code.
The backbone serves every method: `stage` selects a PPFlow patch stage (one compiled program per
stage, static token count); per-block `block_heads` / `block_mlp_dims` describe structurally pruned
sub-models (train-then-prune); token routing (`RoutedDiT`) overrides `run_blocks` without copying a block.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from adaflow.models import layers
from adaflow.models.patchify import StagePatchEmbed, StageUnpatchify, stage_position_embedding
from adaflow.parallel.precision import ATTENTION_IMPLS, resolve_attention, resolve_compute_dtype
from adaflow.parallel.remat import remat_policy

# name -> (depth, hidden_size, num_heads), as in the DiT paper (Table 1).
DIT_SIZES = {
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


class Attention(nn.Module):
  """Multi-head self-attention over the given tokens; `num_heads * head_dim` may differ from D
  (pruned heads). Logits and softmax in float32; matmul inputs in `dtype`.

  `impl` (resolved from `model.attention` by `adaflow.parallel.precision.resolve_attention`):
    "einsum": q, k, v as [B, H, N, hd] through `layers.matmul` (compute-dtype inputs, float32
      accumulation and output): XLA:CPU's fast batched-matmul path; 1.5-1.6x faster than XLA's
      `dot_product_attention` on CPU (experiments/results/attention.md).
    "dot_product_attention": `jax.nn.dot_product_attention` on [B, N, H, hd] with the
      implementation left to JAX: cuDNN's fused (flash) attention on GPUs where it applies, which
      never writes the [B, H, N, N] matrix to memory.
  Both compute the same function (float32: identical outputs; tests/test_attention_impl.py)."""
  hidden: int
  num_heads: int
  head_dim: int
  dtype: Any
  impl: str = "einsum"

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """x: [B, N, D] -> [B, N, D]. mask: optional bool key mask broadcastable to [B, H, N, N]
    (e.g. [B, 1, 1, N]); False keys are excluded (token routing's masked training path)."""
    b, n, _ = x.shape
    h, hd = self.num_heads, self.head_dim
    if self.impl not in ATTENTION_IMPLS:
      raise ValueError(f"Attention.impl must be one of {ATTENTION_IMPLS}, got {self.impl!r}")
    fused = self.impl == "dot_product_attention"
    # With the fused kernel qkv leaves the matmul in the compute dtype (its inputs are that dtype
    # anyway); the einsum path keeps it float32: XLA:CPU runs bf16-output GEMMs at about half the
    # speed of bf16-in / f32-out ones (experiments/results/cpu_gemm.md), and matmul casts anyway.
    qkv = layers.Dense(3 * h * hd, axes=("embed", "heads"), dtype=self.dtype, name="qkv",
                       out_dtype=self.dtype if fused else jnp.float32)(x)
    qkv = qkv.reshape(b, n, 3, h, hd)
    if fused:
      # [B, N, 3, H, hd] -> q, k, v [B, N, H, hd]: dot_product_attention's layout, no head transposes.
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=hd ** -0.5, implementation=None)
    else:
      # [3, B, H, N, hd]: (batch, heads) leading keeps every product of the forward and backward
      # pass on XLA's fast batched-matmul path for compute x compute -> float32.
      qkv = qkv.transpose(2, 0, 3, 1, 4)
      q, k, v = qkv[0], qkv[1], qkv[2]
      logits = layers.matmul("bhqd,bhkd->bhqk", q * (hd ** -0.5), k, self.dtype)
      if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
      probs = jax.nn.softmax(logits, axis=-1)                      # float32
      out = layers.matmul("bhqk,bhkd->bhqd", probs, v, self.dtype).transpose(0, 2, 1, 3)
    out = checkpoint_name(out, "attention")       # kept by the "save_dots" remat policy
    return layers.Dense(self.hidden, axes=("heads", "embed"), dtype=self.dtype, name="proj")(
        out.reshape(b, n, h * hd))


class Mlp(nn.Module):
  hidden: int
  mlp_dim: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [B, N, D] -> [B, N, D]; GELU (tanh approximation) as in DiT.

    The [B, N, mlp_dim] activation (the step's largest) stays in the compute dtype: fc2 rounds its
    input to `dtype` anyway, and GELU is smooth and bounded in slope, so applying it in bf16 moves
    the result by about one bf16 ulp, the rounding fc2 would apply regardless. With float32 it is
    exact float32 as before."""
    x = layers.Dense(self.mlp_dim, axes=("embed", "mlp"), dtype=self.dtype, name="fc1", out_dtype=self.dtype)(x)
    x = nn.gelu(x, approximate=True)
    return layers.Dense(self.hidden, axes=("mlp", "embed"), dtype=self.dtype, name="fc2")(x)


class DiTBlock(nn.Module):
  """adaLN-Zero transformer block. A block with 0 heads (or 0 MLP channels) has no attention
  (or MLP) branch: that is how structured pruning removes a whole branch."""
  hidden: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  dtype: Any
  attention: str = "einsum"     # Attention.impl

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array, attn_scale: Optional[jax.Array] = None,
               mlp_scale: Optional[jax.Array] = None, attn_mask: Optional[jax.Array] = None):
    """x: [B, N, D]; c: [B, D]; attn_scale / mlp_scale: optional [B, N, 1] multipliers on the
    attention / MLP residual branch (token routing scales a kept token's update by its router
    weight, see adaflow.models.routing.tokens.residual_scales); attn_mask: optional bool key mask
    [B, 1, 1, N] for the attention (see Attention)."""
    mod = layers.Dense(6 * self.hidden, axes=("embed", "cond"), dtype=self.dtype, name="adaLN",
                       kernel_init=nn.initializers.zeros)(nn.silu(c))
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, axis=-1)
    if self.num_heads > 0:
      h = layers.modulate(layers.layer_norm("norm1")(x), shift_a, scale_a)
      h = Attention(self.hidden, self.num_heads, self.head_dim, self.dtype, self.attention, name="attn")(h, attn_mask)
      x = x + (gate_a[:, None, :] * h if attn_scale is None else attn_scale * gate_a[:, None, :] * h)
    if self.mlp_dim > 0:
      h = layers.modulate(layers.layer_norm("norm2")(x), shift_m, scale_m)
      h = Mlp(self.hidden, self.mlp_dim, self.dtype, name="mlp")(h)
      x = x + (gate_m[:, None, :] * h if mlp_scale is None else mlp_scale * gate_m[:, None, :] * h)
    return x


class TimestepEmbed(nn.Module):
  hidden: int
  freq_dim: int = 256
  freq_shift: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    """t: [B] (already scaled) -> [B, D]."""
    init = nn.initializers.normal(0.02)
    f = layers.timestep_embedding(t, self.freq_dim, freq_shift=self.freq_shift)
    h = layers.Dense(self.hidden, axes=("freq", "embed"), dtype=self.dtype, name="fc1", kernel_init=init)(f)
    return layers.Dense(self.hidden, axes=("embed", "embed_out"), dtype=self.dtype, name="fc2",
                        kernel_init=init)(nn.silu(h))


class FinalLayer(nn.Module):
  hidden: int
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    """x: [B, N, D], c: [B, D] -> modulated, normalised tokens [B, N, D] (head applied by stage)."""
    mod = layers.Dense(2 * self.hidden, axes=("embed", "cond"), dtype=self.dtype, name="adaLN",
                       kernel_init=nn.initializers.zeros)(nn.silu(c))
    shift, scale = jnp.split(mod, 2, axis=-1)
    return layers.modulate(layers.layer_norm("norm")(x), shift, scale)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """Structure of one block: attention heads and MLP hidden channels (0 removes the branch)."""
  num_heads: int
  mlp_dim: int


class DiT(nn.Module):
  """Class-conditional DiT for images [B, H, W, C] predicting [B, H, W, C] (velocity by default).

  Attributes:
    image_size: (H, W). in_channels: C.
    patch_size: base patch p. stage_groups: per-stage space-to-depth groupings, ((1, 1),) = dense.
    hidden_size, depth, num_heads, mlp_ratio: the usual DiT sizes; head_dim = hidden / num_heads.
    blocks: optional per-block BlockSpec (pruned sub-models); overrides depth/num_heads/mlp_ratio.
    num_classes: labels 0..K-1 plus the null label K (K = 0: unconditional, every label is 0).
    learn_sigma: emit 2C channels like the original DiT; the extra C are kept and ignored.
    time_scale: t in [0, 1] is multiplied by this before the sinusoidal features (1000 = DiT).
    time_freq_shift: 0 (DiT) or 1 (diffusers) in the timestep frequencies.
    dtype: matmul input dtype (bfloat16 default; float32 for exact tests).
    attention: the attention core, "einsum" or "dot_product_attention" (see Attention).
    remat: recompute each block's activations in the backward pass instead of keeping them: False
      (keep all), True / "full" (keep only block inputs: about one more forward of compute) or a
      policy name of `adaflow.parallel.remat.REMAT_POLICIES` (e.g. "save_dots": keep matmul outputs, recompute the
      elementwise work and the attention matrix). Same parameters, outputs and gradients.
    scan_blocks: run identical blocks as one `lax.scan` body (compiled once, so compile time does
      not grow with depth) instead of an unrolled loop. Parameters keep their per-block names
      (`block_i`): they are stacked inside the step, so checkpoints, the torch converter and
      pruning see the same tree either way. Uneven (pruned) blocks and init use the loop.
  """
  image_size: tuple[int, int]
  in_channels: int
  patch_size: int
  hidden_size: int
  depth: int
  num_heads: int
  num_classes: int
  mlp_ratio: float = 4.0
  stage_groups: tuple[tuple[int, int], ...] = ((1, 1),)
  blocks: Optional[tuple[BlockSpec, ...]] = None
  learn_sigma: bool = False
  time_scale: float = 1000.0
  time_freq_shift: float = 0.0
  dtype: Any = jnp.bfloat16
  remat: Any = False
  scan_blocks: bool = True
  attention: str = "einsum"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def block_specs(self) -> tuple[BlockSpec, ...]:
    if self.blocks is not None:
      return tuple(self.blocks)
    mlp = int(self.hidden_size * self.mlp_ratio)
    return tuple(BlockSpec(self.num_heads, mlp) for _ in range(self.depth))

  @property
  def num_stages(self) -> int:
    return len(self.stage_groups)

  def setup(self):
    d = self.hidden_size
    self.embedders = [StagePatchEmbed(self.patch_size, tuple(g), d, self.dtype, name=f"embed_{s}")
                      for s, g in enumerate(self.stage_groups)]
    out_c = self.in_channels * (2 if self.learn_sigma else 1)
    self.heads = [StageUnpatchify(self.patch_size, tuple(g), out_c, tuple(self.image_size), self.dtype,
                                  name=f"head_{s}") for s, g in enumerate(self.stage_groups)]
    self.t_embed = TimestepEmbed(d, freq_shift=self.time_freq_shift, dtype=self.dtype, name="t_embed")
    self.y_embed = self.param("y_embed", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("vocab", "embed")), (self.num_classes + 1, d), jnp.float32)
    if self.num_stages > 1:
      self.level_embed = self.param("level_embed", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), (None, "embed")), (self.num_stages, d), jnp.float32)
    policy = remat_policy(self.remat)
    block_cls = DiTBlock if policy is None else nn.remat(DiTBlock, policy=policy)
    self.block_modules = [block_cls(d, spec.num_heads, self.head_dim, spec.mlp_dim, self.dtype, self.attention,
                                   name=f"block_{i}") for i, spec in enumerate(self.block_specs)]
    self.final = FinalLayer(d, self.dtype, name="final")

  def condition(self, t: jax.Array, y: jax.Array, stage: int = 0) -> jax.Array:
    """t: [B] in [0, 1], y: [B] int -> conditioning vector c: [B, D]."""
    c = self.t_embed(t * self.time_scale) + jnp.take(self.y_embed, y, axis=0)
    if self.num_stages > 1:
      c = c + self.level_embed[stage][None]
    return c

  def embed(self, x: jax.Array, stage: int = 0) -> jax.Array:
    """x: [B, H, W, C] -> tokens with positions [B, N_stage, D] (float32)."""
    tokens = self.embedders[stage](x)
    pos = stage_position_embedding(self.hidden_size, tuple(self.image_size), self.patch_size,
                                   tuple(self.stage_groups[stage]))
    return tokens + pos[None]

  def unembed(self, tokens: jax.Array, c: jax.Array, stage: int = 0) -> jax.Array:
    """tokens [B, N, D] -> prediction [B, H, W, C] (learned-sigma channels dropped)."""
    out = self.heads[stage](self.final(tokens, c))
    return out[..., : self.in_channels]

  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, *, stage: int = 0, **kw) -> jax.Array:
    """x: [B, H, W, C]; t: [B] in [0, 1]; y: [B] int32 -> prediction [B, H, W, C] float32.
    `kw` go to `run_blocks` (RoutedDiT's `mode`)."""
    chex.assert_rank(x, 4)
    chex.assert_shape(t, (x.shape[0],))
    chex.assert_shape(y, (x.shape[0],))
    c = self.condition(t, y, stage)
    tokens = self.embed(x, stage)
    return self.unembed(self.run_blocks(tokens, c, t, **kw), c, stage)

  def run_blocks(self, tokens: jax.Array, c: jax.Array, t: jax.Array) -> jax.Array:
    """tokens [B, N, D] through every block with c [B, D] (t [B]: unused here; RoutedDiT routes by it)."""
    if self.can_scan():
      return self._scan_blocks(tokens, c)
    for block in self.block_modules:
      tokens = block(tokens, c)
    return tokens

  def can_scan(self) -> bool:
    """Whether the blocks run as one scanned body: `scan_blocks` on, identical blocks (not pruned
    unevenly) and params bound (init always runs the loop, which creates the per-block names)."""
    specs = self.block_specs
    return (self.scan_blocks and len(specs) > 1 and len(set(specs)) == 1 and not self.is_initializing()
            and "params" in self.variables)

  def _scan_blocks(self, tokens: jax.Array, c: jax.Array) -> jax.Array:
    """tokens [B, N, D] through all (identical) blocks as one scanned body."""
    block = self.unbound_block()
    return self.scan_layers(lambda x, p: block.apply({"params": p}, x, c), tokens, self.stacked_params("block"))

  def unbound_block(self) -> DiTBlock:
    """The (identical) block as a module to `apply` with one layer's slice of `stacked_params`."""
    spec = self.block_specs[0]
    return DiTBlock(self.hidden_size, spec.num_heads, self.head_dim, spec.mlp_dim, self.dtype, self.attention,
                    parent=None)

  def stacked_params(self, prefix: str) -> Any:
    """The params of `{prefix}_0 .. {prefix}_{depth-1}` stacked on a leading layer axis. They are
    stacked here, inside the traced step, so the stored tree keeps its per-layer names; the stack
    is a copy of those weights per call (their gradients are sliced back by autodiff), small next
    to a step's activations."""
    per_layer = [nn.meta.unbox(self.variables["params"][f"{prefix}_{i}"]) for i in range(len(self.block_specs))]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_layer)

  def scan_layers(self, layer_fn: Callable[[jax.Array, Any], jax.Array], tokens: jax.Array, per_layer: Any) -> jax.Array:
    """tokens [B, N, D] -> `layer_fn(tokens, xs_i)` applied for i = 0..depth-1 as one `lax.scan`
    body over `per_layer` (pytrees with a leading [depth] axis), under `model.remat`'s policy."""
    def body(x, xs):
      return layer_fn(x, xs), None

    policy = remat_policy(self.remat)
    if policy is not None:
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    tokens, _ = jax.lax.scan(body, tokens, per_layer)
    return tokens


def dit_from_config(model_config, image_shape: Sequence[int], num_classes: int) -> DiT:
  """Builds a DiT from `config.model` (see configs/) and the dataset's image shape and classes."""
  h, w, ch = image_shape
  depth, hidden, heads = model_config.depth, model_config.hidden_size, model_config.num_heads
  if model_config.size:
    if model_config.size not in DIT_SIZES:
      raise ValueError(f"config.model.size: must be '' (use depth / hidden_size / num_heads) or one of "
                       f"{sorted(DIT_SIZES)}, got {model_config.size!r}")
    depth, hidden, heads = DIT_SIZES[model_config.size]
  groups = tuple(tuple(g) for g in model_config.stage_groups)
  blocks = model_config.blocks
  if blocks:
    blocks = tuple(BlockSpec(int(b[0]), int(b[1])) for b in blocks)
  return DiT(
      image_size=(h, w), in_channels=ch, patch_size=model_config.patch_size, hidden_size=hidden,
      depth=depth, num_heads=heads, num_classes=num_classes, mlp_ratio=model_config.mlp_ratio,
      stage_groups=groups, blocks=blocks or None, learn_sigma=model_config.learn_sigma,
      time_scale=model_config.time_scale,
      time_freq_shift=model_config.time_freq_shift,
      dtype=layers.dtype_from_name(resolve_compute_dtype(model_config.dtype)[0]),
      remat=model_config.remat, scan_blocks=bool(model_config.scan_blocks),
      attention=resolve_attention(model_config.attention)[0])
