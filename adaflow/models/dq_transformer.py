"""DQ-Transformer: coarse-to-fine autoregressive generation of DQ-VAE code sequences.

Sequence (see `adaflow.models.dqvae`): [class] coarse codes EOS fine codes EOS PAD..., as aligned
content / position / segment ids [B, L]. Token i is embedded as
    content_emb[content_i] + pos_table_{segment_i}[position_i] + index_emb[i] + segment_emb[segment_i]
with separate coarse and fine position tables (zero for the class and padding tokens).

Two causal stacks:
  * position stack: tokens 0..i -> h_i -> logits over the next token's position
    (vocabulary Nf + 1: the fine positions, coarse positions use ids < Nc, id Nf = EOS);
  * content stack: h_i + pos_table_{seg_{i+1}}[pos_{i+1}] + target_segment_emb[seg_{i+1}], causal
    over i -> logits over the next token's content (K codes + EOS).
Loss: CE(content) + 1/2 (CE(coarse positions) + CE(fine positions)).

Sampling (`sample_sequences`) alternates position then content for each new token, the coarse
segment first, then the fine segment, each ending at EOS; structure is enforced by masks (coarse
positions strictly increasing, fine positions = the next cell of a fine region in raster order).
It runs a `lax.fori_loop` over the static length L with per-layer KV caches (`cached=True`) or
recomputes the full prefix every step (`cached=False`, the reference the cache is tested against).
With `fixed_map` (the fixed-grid VQ tokenizer) positions are forced: the raster transformer baseline.
"""
from __future__ import annotations

from typing import Any, Optional

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.models.dqvae import SEG_CLASS, SEG_COARSE, SEG_FINE, SEG_PAD, Layout
from adaflow.models.layers import Dense, matmul

NEG = -1e9


class Block(nn.Module):
  """Pre-LN causal transformer block. Full sequences via `__call__`, one token via `step`."""
  width: int
  heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  def setup(self):
    self.ln1 = nn.LayerNorm()
    self.ln2 = nn.LayerNorm()
    self.qkv = Dense(3 * self.width, axes=("embed", "heads"), dtype=self.dtype)
    self.proj = Dense(self.width, axes=("heads", "embed"), dtype=self.dtype)
    self.fc1 = Dense(int(self.width * self.mlp_ratio), axes=("embed", "mlp"), dtype=self.dtype)
    self.fc2 = Dense(self.width, axes=("mlp", "embed"), dtype=self.dtype)

  def _split(self, x):
    b, n, _ = x.shape
    q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
    dh = self.width // self.heads
    return tuple(t.reshape(b, n, self.heads, dh) for t in (q, k, v))

  def _attend(self, q, k, v, mask):
    """q [B, Nq, H, Dh], k/v [B, Nk, H, Dh], mask [Nq, Nk] or [B, Nq, Nk] bool -> [B, Nq, W]."""
    # Attention products in float32 (XLA:CPU has no batched bf16 x bf16 -> f32 dot); the dense
    # projections around them use the mixed-precision path.
    s = matmul("bqhd,bkhd->bhqk", q, k, jnp.float32) / np.sqrt(q.shape[-1])
    m = mask[None, None] if mask.ndim == 2 else mask[:, None]
    p = jax.nn.softmax(jnp.where(m, s, NEG), axis=-1)
    o = matmul("bhqk,bkhd->bqhd", p, v, jnp.float32)
    return o.reshape(o.shape[0], o.shape[1], self.width)

  def _mlp(self, x):
    return x + self.fc2(nn.gelu(self.fc1(self.ln2(x))))

  def __call__(self, x):
    """x [B, L, W] -> [B, L, W], causal."""
    n = x.shape[1]
    q, k, v = self._split(x)
    x = x + self.proj(self._attend(q, k, v, jnp.tril(jnp.ones((n, n), bool))))
    return self._mlp(x)

  def step(self, x, cache, i):
    """One token. x [B, 1, W]; cache (k, v) [B, L, H, Dh]; i: its index -> (y [B, 1, W], cache)."""
    q, k, v = self._split(x)
    ck = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, i, 0, 0))
    cv = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, i, 0, 0))
    mask = (jnp.arange(ck.shape[1]) <= i)[None, :]
    x = x + self.proj(self._attend(q, ck, cv, mask))
    return self._mlp(x), (ck, cv)


class DQTransformer(nn.Module):
  """Position stack + content stack over DQ code sequences (module docstring)."""
  layout: Layout
  width: int = 128
  depth_pos: int = 2
  depth_content: int = 2
  heads: int = 4
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  def setup(self):
    lay = self.layout
    emb = lambda n: nn.Embed(n, self.width, embedding_init=nn.initializers.normal(0.02))
    self.content_emb = emb(lay.content_vocab)
    self.coarse_pos_emb = emb(lay.nf + 1)
    self.fine_pos_emb = emb(lay.nf + 1)
    self.index_emb = emb(lay.seq_len)
    self.segment_emb = emb(4)
    self.target_segment_emb = emb(4)
    blk = lambda: Block(self.width, self.heads, self.mlp_ratio, self.dtype)
    self.pos_blocks = [blk() for _ in range(self.depth_pos)]
    self.content_blocks = [blk() for _ in range(self.depth_content)]
    self.pos_norm = nn.LayerNorm()
    self.content_norm = nn.LayerNorm()
    self.pos_head = Dense(lay.nf + 1, axes=("embed", "vocab"), dtype=self.dtype)
    self.content_head = Dense(lay.codebook_size + 1, axes=("embed", "vocab"), dtype=self.dtype)

  # ---- embeddings ---------------------------------------------------------------------------
  def _pos_embed(self, pos, seg):
    pos = jnp.clip(pos, 0, self.layout.nf)
    c, f = self.coarse_pos_emb(pos), self.fine_pos_emb(pos)
    return jnp.where((seg == SEG_COARSE)[..., None], c, jnp.where((seg == SEG_FINE)[..., None], f, 0.0))

  def _token_embed(self, content, pos, seg, index):
    return (self.content_emb(content) + self._pos_embed(pos, seg) + self.index_emb(index)
            + self.segment_emb(seg))

  def _target_embed(self, tgt_pos, tgt_seg):
    return self._pos_embed(tgt_pos, tgt_seg) + self.target_segment_emb(tgt_seg)

  # ---- teacher forcing ----------------------------------------------------------------------
  def __call__(self, content, pos, seg):
    """content/pos/seg [B, L] int -> (pos_logits [B, L, Nf + 1], content_logits [B, L, K + 1]);
    row i predicts token i + 1 (the content stack is given token i + 1's position)."""
    chex.assert_rank([content, pos, seg], 2)
    h = self.hidden(content, pos, seg)
    pos_logits = self.pos_head(self.pos_norm(h))
    return pos_logits, self.content_logits(h, *_shift_targets(pos, seg, self.layout.no_pos))

  def hidden(self, content, pos, seg):
    """Position-stack hidden states [B, L, W]."""
    n = content.shape[1]
    h = self._token_embed(content, pos, seg, jnp.arange(n)[None])
    for blk in self.pos_blocks:
      h = blk(h)
    return h

  def content_logits(self, h, tgt_pos, tgt_seg):
    """h [B, L, W], target positions/segments [B, L] -> [B, L, K + 1]."""
    c = h + self._target_embed(tgt_pos, tgt_seg)
    for blk in self.content_blocks:
      c = blk(c)
    return self.content_head(self.content_norm(c))

  # ---- one token with KV caches -------------------------------------------------------------
  def init_cache(self, batch: int):
    """Zero caches: (position-stack layers, content-stack layers), each (k, v) [B, L, H, Dh]."""
    dh = self.width // self.heads
    z = lambda: jnp.zeros((batch, self.layout.seq_len, self.heads, dh), jnp.float32)
    return (tuple((z(), z()) for _ in range(self.depth_pos)), tuple((z(), z()) for _ in range(self.depth_content)))

  def step_position(self, content_i, pos_i, seg_i, i, cache):
    """Token i ([B] ids) -> (h_i [B, 1, W], position logits [B, Nf + 1], position-stack cache)."""
    h = self._token_embed(content_i[:, None], pos_i[:, None], seg_i[:, None], jnp.full((1, 1), i))
    h, cache = _step_blocks(self.pos_blocks, h, cache, i)
    return h, self.pos_head(self.pos_norm(h))[:, 0], cache

  def step_content(self, h_i, tgt_pos, tgt_seg, i, cache):
    """h_i [B, 1, W], the sampled next position/segment [B] -> (content logits [B, K + 1], cache)."""
    c, cache = _step_blocks(self.content_blocks, h_i + self._target_embed(tgt_pos[:, None], tgt_seg[:, None]), cache, i)
    return self.content_head(self.content_norm(c))[:, 0], cache


def _step_blocks(blocks, x, cache, i):
  """Token i, x [B, 1, W], through `blocks` with their KV caches -> (x [B, 1, W], updated caches)."""
  new = []
  for blk, kv in zip(blocks, cache):
    x, kv = blk.step(x, kv, i)
    new.append(kv)
  return x, tuple(new)


def _shift_targets(pos, seg, no_pos: int):
  """Row i's target is token i + 1: positions / segments [B, L] shifted left, the last row `no_pos` / SEG_PAD."""
  pad = lambda x, v: jnp.concatenate([x[:, 1:], jnp.full((x.shape[0], 1), v, x.dtype)], axis=1)
  return pad(pos, no_pos), pad(seg, SEG_PAD)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest logits per row ([..., V]); k <= 0 keeps all."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits >= kth, logits, NEG)


def _draw(key: jax.Array, logits: jax.Array, allowed: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """One token per row among `allowed` [B, V]: logits [B, V] / temperature, masked, top-k filtered -> [B] int32."""
  logits = top_k_filter(jnp.where(allowed, logits.astype(jnp.float32) / temperature, NEG), top_k)
  return jax.random.categorical(key, jnp.where(allowed, logits, NEG), axis=-1).astype(jnp.int32)


def sample_sequences(model: DQTransformer, params, rng: jax.Array, labels: jax.Array, *, top_k: int = 0,
                     temperature: float = 1.0, cached: bool = True,
                     fixed_map: Optional[np.ndarray] = None) -> dict:
  """Autoregressive sampling. labels [B] -> {'content', 'position', 'segment'} [B, L] int32.

  Step i (static loop over L - 1 steps) reads token i and draws token i + 1: first its position
  (masked to what the structure allows), then its content (EOS exactly when the position is EOS).
  Keys: fold_in(rng, i) split into (position, content) keys, so cached and uncached runs draw
  the same numbers. `fixed_map` [Nc] bool (fine regions of a fixed-map tokenizer) forces the
  positions: raster-order generation over fixed VQ codes.
  """
  lay = model.layout
  b, L, nf, nc, K = labels.shape[0], lay.seq_len, lay.nf, lay.nc, lay.codebook_size
  parent = jnp.asarray(lay.parent())
  content = jnp.full((b, L), lay.pad, jnp.int32).at[:, 0].set(lay.class_offset + labels.astype(jnp.int32))
  pos = jnp.full((b, L), lay.no_pos, jnp.int32)
  seg = jnp.full((b, L), SEG_PAD, jnp.int32).at[:, 0].set(SEG_CLASS)
  ar = jnp.arange(nf + 1)
  forced_coarse = None if fixed_map is None else jnp.asarray(~np.asarray(fixed_map, bool))   # [Nc] coarse regions

  def body(i, carry):
    content, pos, seg, coarse_sel, last, cache = carry
    ci, pi, si = content[:, i], pos[:, i], seg[:, i]
    nseg = jnp.where(si == SEG_CLASS, SEG_COARSE,
                     jnp.where(si == SEG_COARSE, jnp.where(ci == lay.eos, SEG_FINE, SEG_COARSE),
                               jnp.where(si == SEG_FINE, jnp.where(ci == lay.eos, SEG_PAD, SEG_FINE), SEG_PAD)))
    if cached:
      h, plog, pcache = model.apply(params, ci, pi, si, i, cache[0], method=DQTransformer.step_position)
    else:
      full_h = model.apply(params, content, pos, seg, method=DQTransformer.hidden)
      h = jax.lax.dynamic_slice_in_dim(full_h, i, 1, axis=1)
      plog = model.apply(params, h, method=lambda m, x: m.pos_head(m.pos_norm(x)))[:, 0]
      pcache = cache[0]
    # Allowed next positions.
    after = ar[None] > last[:, None]
    if forced_coarse is None:
      coarse_ok = (after & (ar[None] < nc)) | (ar[None] == nf)
    else:
      cand_c = forced_coarse[None] & (jnp.arange(nc)[None] > last[:, None])
      nxt_c = jnp.where(cand_c.any(1), jnp.argmax(cand_c, 1), nf)
      coarse_ok = ar[None] == nxt_c[:, None]
    cand_f = (~coarse_sel[:, parent]) & (jnp.arange(nf)[None] > last[:, None])
    nxt_f = jnp.where(cand_f.any(1), jnp.argmax(cand_f, 1), nf)
    fine_ok = ar[None] == nxt_f[:, None]
    allowed = jnp.where((nseg == SEG_COARSE)[:, None], coarse_ok,
                        jnp.where((nseg == SEG_FINE)[:, None], fine_ok, ar[None] == nf))
    kp, kc = jax.random.split(jax.random.fold_in(rng, i))
    p = _draw(kp, plog, allowed, temperature, top_k)
    if cached:
      clog, ccache = model.apply(params, h, p, nseg, i, cache[1], method=DQTransformer.step_content)
    else:
      tgt = _shift_targets(pos.at[:, i + 1].set(p), seg.at[:, i + 1].set(nseg), nf)
      full_c = model.apply(params, full_h, *tgt, method=DQTransformer.content_logits)
      clog = full_c[:, i]
      ccache = cache[1]
    is_end = p == nf
    callowed = jnp.where(is_end[:, None], jnp.arange(K + 1)[None] == K, jnp.arange(K + 1)[None] < K)
    c = jnp.where(nseg == SEG_PAD, lay.pad, _draw(kc, clog, callowed, temperature, top_k))
    content = content.at[:, i + 1].set(c)
    pos = pos.at[:, i + 1].set(p)
    seg = seg.at[:, i + 1].set(nseg)
    picked_coarse = (nseg == SEG_COARSE) & (p < nc)
    coarse_sel = coarse_sel | (picked_coarse[:, None] & (jnp.arange(nc)[None] == p[:, None]))
    last = jnp.where(is_end, -1, p)
    return content, pos, seg, coarse_sel, last, (pcache, ccache)

  cache = model.apply(params, b, method=DQTransformer.init_cache) if cached else ((), ())
  carry = (content, pos, seg, jnp.zeros((b, nc), bool), jnp.full((b,), -1, jnp.int32), cache)
  content, pos, seg, *_ = jax.lax.fori_loop(0, L - 1, body, carry)
  return {"content": content, "position": pos, "segment": seg}


def sequence_loss(model: DQTransformer, params, seq: dict, position_weight: float = 0.5) -> tuple[jax.Array, dict]:
  """CE(content) + position_weight * (CE(coarse positions) + CE(fine positions)), teacher forcing.

  seq: {'content', 'position', 'segment'} [B, L] -> (loss, metrics)."""
  content, pos, seg = seq["content"], seq["position"], seq["segment"]
  lay = model.layout
  pl, cl = model.apply(params, content, pos, seg)
  pl, cl = pl[:, :-1].astype(jnp.float32), cl[:, :-1].astype(jnp.float32)
  tp, tc, ts = pos[:, 1:], content[:, 1:], seg[:, 1:]
  valid = (ts != SEG_PAD).astype(jnp.float32)
  ce_c = -jnp.take_along_axis(jax.nn.log_softmax(cl), jnp.clip(tc, 0, lay.codebook_size)[..., None], -1)[..., 0]
  ce_p = -jnp.take_along_axis(jax.nn.log_softmax(pl), jnp.clip(tp, 0, lay.nf)[..., None], -1)[..., 0]
  wc = (ts == SEG_COARSE).astype(jnp.float32)
  wf = (ts == SEG_FINE).astype(jnp.float32)
  mean = lambda x, w: jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)
  l_content, l_cpos, l_fpos = mean(ce_c, valid), mean(ce_p, wc), mean(ce_p, wf)
  loss = l_content + position_weight * (l_cpos + l_fpos)
  return loss, {"loss": loss, "ce_content": l_content, "ce_coarse_pos": l_cpos, "ce_fine_pos": l_fpos}
