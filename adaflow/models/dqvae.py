"""DQ-VAE: dynamic vector quantisation (Huang et al., CVPR 2023, arXiv 2305.11718).

Each coarse region (F x F pixels) is coded either by ONE code (coarse) or by FOUR codes on its
2 x 2 fine cells (fine), chosen per region by a router:
  * 'gumbel'  the paper's gating network: input concat(LN(coarse feature), avgpool2x2(LN(fine
              features))) [B, Gc, Gc, 2D] -> Linear 2D->2D, SiLU, Linear 2D->2 -> hard Gumbel-softmax
              (tau 1) during training; the selected map is multiplied by the gate's max for the
              straight-through path (the paper's estimator; `dqvae.gate_gradient='both'` instead
              mixes both granularities with the one-hot gate, so the gate's gradient compares the
              two choices). A budget loss gamma (fine_fraction - r)^2 steers the fraction of
              Gumbel-sampled fine regions to the target r. Encoding is deterministic: fine where
              logit_fine - logit_coarse > params['gate_threshold'] (0 = the paper's argmax; with
              `dqvae.gate_calibration` the training step keeps it at an EMA of the batch's (1 - r)
              quantile, so encoding codes a fraction r of the data's regions fine on average).
  * 'entropy' fine where the region's pixel-intensity entropy exceeds a threshold (the paper's
              entropy router; the threshold is a percentile of training-data region entropies).
  * 'fixed'   a content-independent map with round(r * Nc) fine regions: the fixed-grid VQ baseline
              (r = 0: every region coarse; r = 1: every region fine; else the same number of codes
              for every image, equal to DQ's average at the same r).
One codebook [K, D] is shared by both granularities. The decoder sees the fine-grid map
[B, Gf, Gf, D] (coarse codes repeated over their 2 x 2 cells) plus 2-D positions.

Code sequence (`codes_to_sequence` / `sequence_to_codes`, exact inverses), length L = Nf + 3:
  [class] + coarse codes (raster over the coarse grid, coarse regions only) + EOS
          + fine codes (raster over the fine grid, the cells of fine regions) + EOS + PAD...
as three aligned int32 arrays: content (code id; EOS = K; PAD = K + 1; class token = K + 2 + label),
position (coarse-grid index for coarse codes, fine-grid index for fine codes, Nf for class/EOS/PAD)
and segment (0 class, 1 coarse incl. its EOS, 2 fine incl. its EOS, 3 padding).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.models.vq import Decoder, Encoder, PatchDiscriminator, quantize

ROUTERS = ("gumbel", "entropy", "fixed")
SEG_CLASS, SEG_COARSE, SEG_FINE, SEG_PAD = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Layout:
  """Grid sizes for an image of `image_size` with coarse stride F.

  Gc = image_size / F (coarse grid side), Gf = 2 Gc (fine grid side), Nc = Gc^2, Nf = Gf^2,
  K = codebook size; sequence length L = Nf + 3; special content ids EOS = K, PAD = K + 1,
  class c -> K + 2 + c; position id Nf means "no position" (class, EOS, PAD).
  """
  image_size: int
  coarse_stride: int
  codebook_size: int
  num_classes: int

  @property
  def gc(self) -> int:
    return self.image_size // self.coarse_stride

  @property
  def gf(self) -> int:
    return 2 * self.gc

  @property
  def nc(self) -> int:
    return self.gc * self.gc

  @property
  def nf(self) -> int:
    return self.gf * self.gf

  @property
  def seq_len(self) -> int:
    return self.nf + 3

  @property
  def eos(self) -> int:
    return self.codebook_size

  @property
  def pad(self) -> int:
    return self.codebook_size + 1

  @property
  def class_offset(self) -> int:
    return self.codebook_size + 2

  @property
  def content_vocab(self) -> int:
    return self.codebook_size + 2 + max(self.num_classes, 1)

  @property
  def no_pos(self) -> int:
    return self.nf

  def parent(self) -> np.ndarray:
    """[Nf] coarse-region index of each fine cell (raster order)."""
    r, c = np.meshgrid(np.arange(self.gf), np.arange(self.gf), indexing="ij")
    return ((r // 2) * self.gc + (c // 2)).reshape(-1).astype(np.int32)


def layout_from_config(dq_cfg, image_size: int, num_classes: int) -> Layout:
  return Layout(int(image_size), int(dq_cfg.coarse_stride), int(dq_cfg.codebook_size), int(num_classes))


# ---- routers ---------------------------------------------------------------------------------

def fixed_fine_map(nc: int, fine_fraction: float) -> np.ndarray:
  """[Nc] bool: round(r * Nc) fine regions spread over the grid by a fixed (seeded) permutation."""
  n_fine = int(round(fine_fraction * nc))
  mask = np.zeros(nc, bool)
  mask[np.random.RandomState(0).permutation(nc)[:n_fine]] = True
  return mask


def region_entropy(images: jax.Array, coarse_stride: int, bins: int = 16) -> jax.Array:
  """Shannon entropy (nats) of the grey-level histogram of each F x F region.

  images [B, H, W, C] in [-1, 1] -> [B, H/F, W/F]. Not differentiable (router input only).
  """
  chex.assert_rank(images, 4)
  b, h, w, _ = images.shape
  f = coarse_stride
  g = jnp.mean(jax.lax.stop_gradient(images), axis=-1)
  q = jnp.clip(jnp.floor((g + 1.0) * 0.5 * bins), 0, bins - 1).astype(jnp.int32)
  q = q.reshape(b, h // f, f, w // f, f).transpose(0, 1, 3, 2, 4).reshape(b, h // f, w // f, f * f)
  hist = jax.nn.one_hot(q, bins, dtype=jnp.float32).mean(axis=-2)
  return -jnp.sum(jnp.where(hist > 0, hist * jnp.log(jnp.maximum(hist, 1e-12)), 0.0), axis=-1)


def entropy_threshold(images: np.ndarray, coarse_stride: int, fine_fraction: float, bins: int = 16) -> float:
  """The (1 - r) quantile of region entropies over `images` [N, H, W, C]: regions above it are fine."""
  e = np.asarray(region_entropy(jnp.asarray(images), coarse_stride, bins)).reshape(-1)
  return float(np.quantile(e, 1.0 - fine_fraction))


def gumbel_hard(rng: jax.Array, logits: jax.Array, tau: float = 1.0) -> jax.Array:
  """Hard Gumbel-softmax with straight-through gradients. logits [..., n] -> one-hot [..., n]."""
  g = -jnp.log(-jnp.log(jax.random.uniform(rng, logits.shape, jnp.float32, 1e-10, 1.0)))
  soft = jax.nn.softmax((logits + g) / tau, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(soft, -1), logits.shape[-1], dtype=soft.dtype)
  return hard + soft - jax.lax.stop_gradient(soft)


def upsample2(x: jax.Array) -> jax.Array:
  """[B, G, G, ...] -> [B, 2G, 2G, ...] by repeating each cell over 2 x 2."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# ---- the network -----------------------------------------------------------------------------

class DQVAENet(nn.Module):
  """Encoder (fine + coarse heads), gate MLP, decoder, shared codebook (+ optional critic).

  Codebook variables are the params 'codebook_embed' [K, D], 'codebook_cluster_size' [K] and
  'codebook_embed_sum' [K, D] (`codebook_of` reads them as {'embed', 'cluster_size', 'embed_sum'});
  they get no gradients and are updated by EMA (`vq.ema_codebook_update`).
  """
  width: int
  embed_dim: int
  coarse_stride: int
  codebook_size: int
  channels: int
  num_res_blocks: int = 1
  disc_width: int = 0      # > 0 adds a PatchGAN critic under params['disc']

  def setup(self):
    self.encoder = Encoder(self.width, self.embed_dim, self.coarse_stride, self.num_res_blocks)
    self.decoder = Decoder(self.width, self.channels, self.coarse_stride, self.num_res_blocks)
    self.gate_norm_c = nn.LayerNorm(use_bias=False, use_scale=False)
    self.gate_norm_f = nn.LayerNorm(use_bias=False, use_scale=False)
    self.gate_fc1 = nn.Dense(2 * self.embed_dim)
    self.gate_fc2 = nn.Dense(2)
    k, d = self.codebook_size, self.embed_dim
    self.embed = self.param("codebook_embed", nn.initializers.normal(1.0), (k, d))
    # cluster_size starts at 0: every code is "dead" at the first update and restarts from data.
    self.cluster_size = self.param("codebook_cluster_size", nn.initializers.zeros, (k,))
    self.embed_sum = self.param("codebook_embed_sum", nn.initializers.zeros, (k, d))
    # Encoding threshold on the gate's logit difference; no gradient (set by after_update).
    self.gate_threshold = self.param("gate_threshold", nn.initializers.zeros, ())
    if self.disc_width > 0:
      self.disc = PatchDiscriminator(self.disc_width)

  def features(self, x):
    """images [B, H, W, C] -> (fine [B, Gf, Gf, D], coarse [B, Gc, Gc, D])."""
    return self.encoder(x)

  def gate_logits(self, fine, coarse):
    """[B, Gf, Gf, D], [B, Gc, Gc, D] -> logits [B, Gc, Gc, 2] (index 0 coarse, 1 fine)."""
    b, gf, _, d = fine.shape
    fn = self.gate_norm_f(fine).reshape(b, gf // 2, 2, gf // 2, 2, d).mean(axis=(2, 4))
    h = jnp.concatenate([self.gate_norm_c(coarse), fn], axis=-1)
    return self.gate_fc2(nn.silu(self.gate_fc1(h)))

  def decode(self, qmap):
    """[B, Gf, Gf, D] -> images [B, H, W, C]."""
    return self.decoder(qmap)

  def critic(self, x):
    return self.disc(x)

  def __call__(self, x):
    """Touches every sub-module (for init). Returns the decoded fine-feature map."""
    fine, coarse = self.features(x)
    logits = self.gate_logits(fine, coarse)
    out = self.decode(fine + 0.0 * logits.sum() + 0.0 * self.embed.sum() + 0.0 * self.gate_threshold)
    if self.disc_width > 0:
      out = out + 0.0 * self.critic(out).sum()
    return out


def net_from_config(dq_cfg, channels: int) -> DQVAENet:
  return DQVAENet(width=int(dq_cfg.width), embed_dim=int(dq_cfg.embed_dim), coarse_stride=int(dq_cfg.coarse_stride),
                  codebook_size=int(dq_cfg.codebook_size), channels=int(channels),
                  num_res_blocks=int(dq_cfg.num_res_blocks),
                  disc_width=int(dq_cfg.disc_width) if float(dq_cfg.disc_weight) > 0 else 0)


def codebook_of(params) -> dict:
  """The codebook dict of an (unboxed) DQ-VAE variable tree {'params': ...}."""
  p = params["params"]
  return {"embed": p["codebook_embed"], "cluster_size": p["codebook_cluster_size"],
          "embed_sum": p["codebook_embed_sum"]}


def with_codebook(params, codebook: dict):
  """A copy of `params` with the codebook variables replaced."""
  p = dict(params["params"])
  p["codebook_embed"] = codebook["embed"]
  p["codebook_cluster_size"] = codebook["cluster_size"]
  p["codebook_embed_sum"] = codebook["embed_sum"]
  out = dict(params)
  out["params"] = p
  return out


def gate_margin(net: "DQVAENet", params, fine: jax.Array, coarse: jax.Array) -> jax.Array:
  """logit_fine - logit_coarse [B, Gc, Gc] of the gate for encoder features (see `DQVAENet.gate_logits`)."""
  logits = net.apply(params, fine, coarse, method=DQVAENet.gate_logits)
  return logits[..., 1] - logits[..., 0]


def mix_map(gate: jax.Array, q_coarse: jax.Array, q_fine: jax.Array) -> jax.Array:
  """Fine-grid map as gate[..., 0] * coarse + gate[..., 1] * fine (`gate_gradient='both'`).

  gate [B, Gc, Gc, 2] one-hot in value (straight-through Gumbel), q_coarse [B, Gc, Gc, D],
  q_fine [B, Gf, Gf, D] -> [B, Gf, Gf, D]; equal in value to `assemble_map` of the same choice.
  """
  g = upsample2(gate)
  return g[..., 0:1] * upsample2(q_coarse) + g[..., 1:2] * q_fine


def assemble_map(fine_mask: jax.Array, q_coarse: jax.Array, q_fine: jax.Array,
                 scale: Optional[jax.Array] = None) -> jax.Array:
  """Fine-grid map from both granularities.

  fine_mask [B, Gc, Gc] bool; q_coarse [B, Gc, Gc, D]; q_fine [B, Gf, Gf, D]; scale [B, Gc, Gc]
  (the gate's max, straight-through) or None -> [B, Gf, Gf, D].
  """
  m = upsample2(fine_mask)[..., None]
  out = jnp.where(m, q_fine, upsample2(q_coarse))
  if scale is not None:
    out = out * upsample2(scale)[..., None]
  return out


# ---- sequences -------------------------------------------------------------------------------

def codes_to_sequence(layout: Layout, fine_mask: jax.Array, codes_coarse: jax.Array, codes_fine: jax.Array,
                      labels: jax.Array) -> dict:
  """Variable-length code sequence, padded to L = Nf + 3.

  fine_mask [B, Nc] bool, codes_coarse [B, Nc] int, codes_fine [B, Nf] int, labels [B] int ->
  {'content', 'position', 'segment'} each [B, L] int32 (see the module docstring) and
  'length' [B] (number of non-pad tokens, class token and both EOS included).
  """
  chex.assert_shape(fine_mask, (None, layout.nc))
  chex.assert_shape(codes_fine, (fine_mask.shape[0], layout.nf))
  b = fine_mask.shape[0]
  nc_, nf_, length = layout.nc, layout.nf, layout.seq_len
  parent = jnp.asarray(layout.parent())
  coarse_used = ~fine_mask                                    # [B, Nc]
  fine_used = fine_mask[:, parent]                            # [B, Nf]
  c_order = jnp.argsort(jnp.where(coarse_used, 0, 1) * nc_ + jnp.arange(nc_)[None], axis=1)   # used first, raster
  f_order = jnp.argsort(jnp.where(fine_used, 0, 1) * nf_ + jnp.arange(nf_)[None], axis=1)
  n_c = coarse_used.sum(1)                                    # [B]
  n_f = fine_used.sum(1)
  k = jnp.arange(length)[None]                                # [1, L]
  ci = jnp.clip(k - 1, 0, nc_ - 1)
  fi = jnp.clip(k - n_c[:, None] - 2, 0, nf_ - 1)
  c_pos = jnp.take_along_axis(c_order, jnp.broadcast_to(ci, (b, length)), axis=1)
  f_pos = jnp.take_along_axis(f_order, jnp.broadcast_to(fi, (b, length)), axis=1)
  c_code = jnp.take_along_axis(codes_coarse, c_pos, axis=1)
  f_code = jnp.take_along_axis(codes_fine, f_pos, axis=1)
  is_cls = k == 0
  is_c = (k >= 1) & (k <= n_c[:, None])
  is_ceos = k == n_c[:, None] + 1
  is_f = (k >= n_c[:, None] + 2) & (k <= n_c[:, None] + n_f[:, None] + 1)
  is_feos = k == n_c[:, None] + n_f[:, None] + 2
  content = jnp.full((b, length), layout.pad, jnp.int32)
  content = jnp.where(is_cls, layout.class_offset + labels[:, None], content)
  content = jnp.where(is_c, c_code, content)
  content = jnp.where(is_f, f_code, content)
  content = jnp.where(is_ceos | is_feos, layout.eos, content)
  position = jnp.full((b, length), layout.no_pos, jnp.int32)
  position = jnp.where(is_c, c_pos, position)
  position = jnp.where(is_f, f_pos, position)
  segment = jnp.full((b, length), SEG_PAD, jnp.int32)
  segment = jnp.where(is_cls, SEG_CLASS, segment)
  segment = jnp.where(is_c | is_ceos, SEG_COARSE, segment)
  segment = jnp.where(is_f | is_feos, SEG_FINE, segment)
  return {"content": content.astype(jnp.int32), "position": position.astype(jnp.int32),
          "segment": segment, "length": (n_c + n_f + 3).astype(jnp.int32)}


def sequence_to_codes(layout: Layout, seq: dict) -> dict:
  """Inverse of `codes_to_sequence`. seq {'content', 'position', 'segment'} [B, L] ->
  {'fine_mask' [B, Nc] bool, 'codes_coarse' [B, Nc], 'codes_fine' [B, Nf], 'labels' [B]}.
  Slots that the sequence does not code (fine cells of coarse regions and vice versa) hold 0.
  """
  content, position, segment = seq["content"], seq["position"], seq["segment"]
  chex.assert_rank([content, position, segment], 2)
  b = content.shape[0]
  is_code = content < layout.codebook_size
  is_c = is_code & (segment == SEG_COARSE)
  is_f = is_code & (segment == SEG_FINE)
  rows = jnp.arange(b)[:, None]
  # Scatter into an extra trash slot (index N) for tokens that are not codes of that granularity.
  c_idx = jnp.where(is_c, position, layout.nc)
  f_idx = jnp.where(is_f, position, layout.nf)
  codes_coarse = jnp.zeros((b, layout.nc + 1), jnp.int32).at[rows, c_idx].set(jnp.where(is_c, content, 0))
  coarse_used = jnp.zeros((b, layout.nc + 1), bool).at[rows, c_idx].set(is_c)
  codes_fine = jnp.zeros((b, layout.nf + 1), jnp.int32).at[rows, f_idx].set(jnp.where(is_f, content, 0))
  return {"fine_mask": ~coarse_used[:, :layout.nc], "codes_coarse": codes_coarse[:, :layout.nc],
          "codes_fine": codes_fine[:, :layout.nf],
          "labels": (content[:, 0] - layout.class_offset).astype(jnp.int32)}


# ---- the tokenizer as pure functions of (params, images) -----------------------------------------

@dataclasses.dataclass(frozen=True)
class DQTokenizer:
  """Pure encode/decode around a trained `DQVAENet` (params passed explicitly).

  router: 'gumbel' | 'entropy' | 'fixed'; fine_fraction: r (the fixed map's fraction);
  threshold: the entropy router's threshold (nats).
  """
  net: DQVAENet
  layout: Layout
  router: str
  fine_fraction: float = 0.5
  threshold: float = 0.0
  entropy_bins: int = 16

  def fine_decision(self, params, images, fine, coarse, rng: Optional[jax.Array] = None, tau: float = 1.0):
    """(fine_mask [B, Gc, Gc] bool, gate [B, Gc, Gc, 2] or None). Gumbel noise only when rng is
    given; without it the gate thresholds its logit margin at params['gate_threshold']."""
    b = images.shape[0]
    gc = self.layout.gc
    if self.router == "gumbel":
      logits = self.net.apply(params, fine, coarse, method=DQVAENet.gate_logits)
      if rng is None:
        margin = logits[..., 1] - logits[..., 0]
        return margin > params["params"]["gate_threshold"], None
      gate = gumbel_hard(rng, logits.astype(jnp.float32), tau)
      return gate[..., 1] > 0.5, gate
    if self.router == "entropy":
      e = region_entropy(images, self.layout.coarse_stride, self.entropy_bins)
      return e > self.threshold, None
    m = jnp.asarray(fixed_fine_map(self.layout.nc, self.fine_fraction)).reshape(1, gc, gc)
    return jnp.broadcast_to(m, (b, gc, gc)), None

  def encode_codes(self, params, images) -> dict:
    """images [B, H, W, C] -> {'fine_mask' [B, Nc], 'codes_coarse' [B, Nc], 'codes_fine' [B, Nf]}."""
    fine, coarse = self.net.apply(params, images, method=DQVAENet.features)
    mask, _ = self.fine_decision(params, images, fine, coarse)
    embed = params["params"]["codebook_embed"]
    ic, _ = quantize(coarse, embed)
    if_, _ = quantize(fine, embed)
    b = images.shape[0]
    return {"fine_mask": mask.reshape(b, -1), "codes_coarse": ic.reshape(b, -1), "codes_fine": if_.reshape(b, -1)}

  def encode(self, params, images, labels) -> dict:
    """images [B, H, W, C], labels [B] -> sequence dict (see `codes_to_sequence`)."""
    c = self.encode_codes(params, images)
    return codes_to_sequence(self.layout, c["fine_mask"], c["codes_coarse"], c["codes_fine"], labels)

  def decode_codes(self, params, codes: dict):
    """{'fine_mask' [B, Nc] bool, 'codes_coarse' [B, Nc], 'codes_fine' [B, Nf]} -> images [B, H, W, C]."""
    b = codes["fine_mask"].shape[0]
    gc, gf = self.layout.gc, self.layout.gf
    embed = jnp.asarray(params["params"]["codebook_embed"])
    qc = embed[codes["codes_coarse"]].reshape(b, gc, gc, -1)
    qf = embed[codes["codes_fine"]].reshape(b, gf, gf, -1)
    qmap = assemble_map(codes["fine_mask"].reshape(b, gc, gc), qc, qf)
    return self.net.apply(params, qmap, method=DQVAENet.decode)

  def decode(self, params, seq: dict):
    """Sequence dict [B, L] -> images [B, H, W, C] (inverts `encode` exactly, up to the decoder)."""
    return self.decode_codes(params, sequence_to_codes(self.layout, seq))

  def reconstruct(self, params, images):
    """images -> (reconstruction [B, H, W, C], fine_mask [B, Nc])."""
    c = self.encode_codes(params, images)
    return self.decode_codes(params, c), c["fine_mask"]


def render_granularity(images: np.ndarray, fine_mask: np.ndarray, coarse_stride: int) -> np.ndarray:
  """Picture of the coarse/fine map: images [N, H, W, C] in [-1, 1], fine_mask [N, Nc] bool ->
  [N, H, W, 3] in [-1, 1]: the image (grey) with fine regions tinted red and split into their 4
  cells by lines, coarse regions tinted blue and outlined."""
  imgs = np.asarray(images, np.float32)
  n, h, w, c = imgs.shape
  grey = imgs.mean(-1, keepdims=True) if c > 1 else imgs
  out = np.repeat(grey, 3, axis=-1) * 0.6
  f = coarse_stride
  gc = h // f
  mask = np.asarray(fine_mask, bool).reshape(n, gc, gc)
  for i in range(n):
    for r in range(gc):
      for q in range(gc):
        ys, xs = slice(r * f, (r + 1) * f), slice(q * f, (q + 1) * f)
        if mask[i, r, q]:
          out[i, ys, xs, 0] += 0.4
          out[i, r * f + f // 2, xs] = (1.0, -1.0, -1.0)
          out[i, ys, q * f + f // 2] = (1.0, -1.0, -1.0)
        else:
          out[i, ys, xs, 2] += 0.4
        out[i, r * f, xs] = (-1.0, -1.0, 1.0) if not mask[i, r, q] else (1.0, -1.0, -1.0)
        out[i, ys, q * f] = (-1.0, -1.0, 1.0) if not mask[i, r, q] else (1.0, -1.0, -1.0)
  return np.clip(out, -1.0, 1.0)
