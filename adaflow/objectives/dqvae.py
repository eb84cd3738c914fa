"""DQ-VAE objective (stage 1 of DQ): reconstruction + commitment + budget (+ perceptual, + GAN).

    loss = l1 |x - x_rec| + l2 (x - x_rec)^2                 (means over pixels)
         + commitment * ||z - sg(q)||^2                        (over the vectors actually used)
         + gamma (fine_fraction - r)^2                         (router 'gumbel' only)
         + perceptual_weight ||phi(x) - phi(x_rec)||^2         (phi = adaflow.eval classifier features)
         + disc_weight * hinge-GAN generator term + critic hinge loss (critic params only)
where fine_fraction is the mean of the hard Gumbel gate (straight-through). With
`dqvae.gate_calibration` the side statistics also carry the batch's (1 - r) quantile of the gate
margin, and `after_update` moves params['gate_threshold'] (the encoding threshold) towards it by EMA.

The codebook gets no gradient: the loss returns batch statistics as its side output,
`(loss, (metrics, side))`, and the train step calls `after_update(params, side)` after the optimizer update, which applies the EMA
k-means step (decay `dqvae.ema_decay`) and restarts dead codes from encoder vectors of the batch.

`generate(params, rng, labels)` returns reconstructions of real examples of the requested classes
(a tokenizer cannot sample), so `adaflow sample` shows reconstructions and `adaflow eval` reports
the FD of reconstructions (rFD).
"""
from __future__ import annotations

from typing import Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.config import require
from adaflow import data as data_lib
from adaflow.models import dqvae as dq
from adaflow.objectives.base import ObjectiveBase
from adaflow.parallel.precision import describe_xla_backend
from adaflow.models.vq import codebook_statistics, ema_codebook_update, quantize, restart_candidates


def build_tokenizer(dq_cfg, info, entropy_images: Optional[np.ndarray] = None) -> dq.DQTokenizer:
  """A `DQTokenizer` for `config.dqvae` on the dataset `info`. The entropy router sets its
  threshold from `entropy_images` [N, H, W, C] (the first `dqvae.entropy_num_images` training
  images, loaded by `adaflow.methods.dqvae_objective`)."""
  layout = dq.layout_from_config(dq_cfg, info.image_shape[0], info.num_classes)
  net = dq.net_from_config(dq_cfg, info.image_shape[2])
  threshold = 0.0
  if dq_cfg.router == "entropy":
    if entropy_images is None:
      raise ValueError("dqvae.router='entropy' needs training images to set its threshold (entropy_images)")
    threshold = dq.entropy_threshold(entropy_images, layout.coarse_stride, float(dq_cfg.fine_fraction),
                                     int(dq_cfg.entropy_bins))
  return dq.DQTokenizer(net, layout, dq_cfg.router, float(dq_cfg.fine_fraction), threshold, int(dq_cfg.entropy_bins))


class DQVAEObjective(ObjectiveBase):
  """Stage-1 objective; see the module docstring."""

  has_side = True   # codebook statistics and the gate's quantile
  has_maps = True

  @classmethod
  def validate(cls, config, info) -> None:
    """Checks `config.dqvae` (no compilation)."""
    d = config.dqvae
    require(d.router in dq.ROUTERS, "dqvae.router", f"must be one of {dq.ROUTERS}, got {d.router!r}")
    require(0.0 <= float(d.fine_fraction) <= 1.0, "dqvae.fine_fraction", f"must be in [0, 1], got {d.fine_fraction}")
    stride = d.coarse_stride
    require(isinstance(stride, int) and stride >= 2 and (stride & (stride - 1)) == 0, "dqvae.coarse_stride",
            f"must be a power of two >= 2, got {stride!r}")
    require(int(d.embed_dim) % 4 == 0 and d.embed_dim > 0, "dqvae.embed_dim",
            f"must be a positive multiple of 4 (2-D positions), got {d.embed_dim}")
    require(int(d.codebook_size) >= 2, "dqvae.codebook_size", f"must be >= 2, got {d.codebook_size}")
    require(0.0 <= float(d.ema_decay) < 1.0, "dqvae.ema_decay", f"must be in [0, 1), got {d.ema_decay}")
    require(int(d.width) >= 8, "dqvae.width", f"must be >= 8, got {d.width}")
    require(float(d.gumbel_tau) > 0, "dqvae.gumbel_tau", "must be > 0")
    require(0.0 <= float(d.gate_calibration_decay) < 1.0, "dqvae.gate_calibration_decay",
            f"must be in [0, 1), got {d.gate_calibration_decay}")
    require(d.gate_gradient in ("max", "both"), "dqvae.gate_gradient",
            f"must be 'max' (the paper's) or 'both', got {d.gate_gradient!r}")
    for field in ("budget_weight", "commitment", "l1_weight", "l2_weight", "perceptual_weight", "disc_weight"):
      require(float(d[field]) >= 0, f"dqvae.{field}", f"must be >= 0 (a loss weight; 0 = off), got {d[field]}")
    require(float(d.restart_threshold) >= 0, "dqvae.restart_threshold",
            f"must be >= 0 (0 = never restart a code), got {d.restart_threshold}")
    # recon_bank_per_class: generate() draws from it after training; entropy_*: the entropy router's threshold.
    for field, lo in (("num_res_blocks", 0), ("disc_width", 1), ("recon_bank_per_class", 1), ("entropy_bins", 2),
                      ("entropy_num_images", 1)):
      require(isinstance(d[field], int) and d[field] >= lo, f"dqvae.{field}", f"must be an integer >= {lo}, got {d[field]!r}")
    if info is not None:
      h, w, _ = info.image_shape
      require(h == w, "data.image_size", f"DQ-VAE needs square images, got {h}x{w}")
      require(h % int(d.coarse_stride) == 0, "dqvae.coarse_stride",
              f"image size {h} (data.image_size) is not divisible by coarse_stride {d.coarse_stride}; use a divisor")
    require(float(d.perceptual_weight) == 0 or int(d.perceptual_seed) != int(config.eval.classifier_seed),
            "dqvae.perceptual_seed", f"{d.perceptual_seed} equals eval.classifier_seed: the reconstructions "
            "would be scored (rFD) by the network of their own loss; use another seed")
    require(float(config.train.weight_decay) == 0.0, "train.weight_decay",
            "must be 0 for dqvae (weight decay would shrink the EMA codebook statistics)")

  def __init__(self, config, info, tokenizer: dq.DQTokenizer, classifier=None):
    """`tokenizer` from `build_tokenizer` (with the entropy router's threshold images);
    `classifier` (a FeatureClassifier: `num_classes`, `params`, `network`) is the frozen feature
    net of the perceptual loss, needed when `dqvae.perceptual_weight > 0`. Both are built by
    `adaflow.methods.dqvae_objective`, which does the loading."""
    self.config, self.info = config, info
    self.dq = config.dqvae
    self.num_classes = info.num_classes
    self.tokenizer = tokenizer
    self.layout = self.tokenizer.layout
    self.net = self.tokenizer.net
    if float(self.dq.perceptual_weight) > 0 and classifier is None:
      raise ValueError("dqvae.perceptual_weight > 0 needs the evaluation classifier (classifier=...)")
    self._classifier = classifier
    self._bank = None

  # ---- parameters ---------------------------------------------------------------------------
  def init(self, rng: jax.Array):
    h, w, c = self.info.image_shape
    return self.net.init(rng, jnp.zeros((1, h, w, c), jnp.float32))

  # ---- training -----------------------------------------------------------------------------
  def _perceptual(self, x, xr):
    clf = self._classifier
    model = clf.network
    p = jax.lax.stop_gradient(clf.params)
    _, fx = model.apply(p, x)
    _, fr = model.apply(p, xr)
    return jnp.mean(jnp.square(jax.lax.stop_gradient(fx) - fr))

  def loss(self, params, batch, rng: jax.Array):
    """batch {'image': [B, H, W, C] in [-1, 1], 'label': [B]} -> (loss, (metrics, side statistics))."""
    x = batch["image"]
    chex.assert_rank(x, 4)
    d = self.dq
    k_gate, k_restart = jax.random.split(rng)
    fine, coarse = self.net.apply(params, x, method=dq.DQVAENet.features)
    sel, gate = self.tokenizer.fine_decision(params, x, fine, coarse, rng=k_gate, tau=float(d.gumbel_tau))
    if gate is not None:
      scale = jnp.max(gate, axis=-1)
      fine_frac = jnp.mean(gate[..., 1])
      budget = float(d.budget_weight) * jnp.square(fine_frac - float(d.fine_fraction))
    else:
      scale = None
      fine_frac = jnp.mean(sel.astype(jnp.float32))
      budget = jnp.zeros((), jnp.float32)
    embed = params["params"]["codebook_embed"]
    ic, qc = quantize(coarse, embed)
    if_, qf = quantize(fine, embed)
    w_c = (~sel).astype(jnp.float32)                     # [B, Gc, Gc]
    w_f = dq.upsample2(sel).astype(jnp.float32)          # [B, Gf, Gf]
    err_c = jnp.sum(jnp.square(coarse - qc), -1)
    err_f = jnp.sum(jnp.square(fine - qf), -1)
    n_used = jnp.sum(w_c) + jnp.sum(w_f)
    commit = float(d.commitment) * (jnp.sum(w_c * err_c) + jnp.sum(w_f * err_f)) / (n_used * coarse.shape[-1])
    qc_st = coarse + jax.lax.stop_gradient(qc - coarse)
    qf_st = fine + jax.lax.stop_gradient(qf - fine)
    if gate is not None and d.gate_gradient == "both":
      qmap = dq.mix_map(gate, qc_st, qf_st)
    else:
      qmap = dq.assemble_map(sel, qc_st, qf_st, scale)
    xr = self.net.apply(params, qmap, method=dq.DQVAENet.decode)
    chex.assert_equal_shape([xr, x])
    mse = jnp.mean(jnp.square(xr - x))
    rec = float(d.l1_weight) * jnp.mean(jnp.abs(xr - x)) + float(d.l2_weight) * mse
    total = rec + commit + budget
    metrics = {"rec": rec, "mse": mse, "psnr": 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12)),
               "commit": commit, "budget": budget, "fine_fraction": fine_frac,
               "codes_per_image": jnp.mean(jnp.sum(w_c, (1, 2)) + jnp.sum(w_f, (1, 2)))}
    if self._classifier is not None:
      perc = self._perceptual(x, xr)
      total = total + float(d.perceptual_weight) * perc
      metrics["perceptual"] = perc
    if float(d.disc_weight) > 0:
      frozen = dict(params)
      frozen["params"] = dict(params["params"])
      frozen["params"]["disc"] = jax.lax.stop_gradient(params["params"]["disc"])
      g_loss = -jnp.mean(self.net.apply(frozen, xr, method=dq.DQVAENet.critic))
      d_real = self.net.apply(params, x, method=dq.DQVAENet.critic)
      d_fake = self.net.apply(params, jax.lax.stop_gradient(xr), method=dq.DQVAENet.critic)
      d_loss = jnp.mean(jax.nn.relu(1.0 - d_real)) + jnp.mean(jax.nn.relu(1.0 + d_fake))
      total = total + float(d.disc_weight) * g_loss + d_loss
      metrics.update(g_loss=g_loss, d_loss=d_loss)
    dim = coarse.shape[-1]
    z = jnp.concatenate([coarse.reshape(-1, dim), fine.reshape(-1, dim)])
    idx = jnp.concatenate([ic.reshape(-1), if_.reshape(-1)])
    wts = jnp.concatenate([w_c.reshape(-1), w_f.reshape(-1)])
    counts, sums = codebook_statistics(z, idx, wts, self.layout.codebook_size)
    probs = counts / jnp.maximum(counts.sum(), 1.0)
    metrics["perplexity"] = jnp.exp(-jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.maximum(probs, 1e-12)), 0.0)))
    metrics["loss"] = total
    side = {"counts": counts, "sums": sums,
            "candidates": restart_candidates(k_restart, z, wts, self.layout.codebook_size)}
    if gate is not None and bool(d.gate_calibration):
      margin = jax.lax.stop_gradient(dq.gate_margin(self.net, params, fine, coarse))
      side["gate_quantile"] = jnp.quantile(margin.reshape(-1), 1.0 - float(d.fine_fraction))
      metrics["gate_threshold"] = params["params"]["gate_threshold"]
    return total, (metrics, side)

  def after_update(self, params, side):
    """EMA codebook step + dead-code restart, and the EMA of the gate's encoding threshold (called
    by the train step after the optimizer)."""
    decay = float(self.dq.ema_decay)
    new = ema_codebook_update(dq.codebook_of(params), side["counts"], side["sums"], side["candidates"],
                              decay=decay, restart_threshold=float(self.dq.restart_threshold))
    out = dq.with_codebook(params, new)
    if "gate_quantile" in side:
      thr = out["params"]["gate_threshold"]
      a = float(self.dq.gate_calibration_decay)
      out["params"]["gate_threshold"] = a * thr + (1.0 - a) * side["gate_quantile"].astype(thr.dtype)
    return out

  # ---- "sampling": reconstructions of real examples -------------------------------------------
  def _reconstruction_bank(self) -> np.ndarray:
    """[num_classes, M, H, W, C] real training examples, M = dqvae.recon_bank_per_class."""
    if self._bank is None:
      k, m = max(self.num_classes, 1), int(self.dq.recon_bank_per_class)
      imgs, labels = data_lib.load_arrays(self.config.data, min(k * m * 4, 16384), seed=123)
      bank = []
      for c in range(k):
        sel = imgs[labels == c] if self.num_classes > 1 else imgs
        if len(sel) == 0:   # a class missing from the loaded examples: show any examples
          sel = imgs
        bank.append(sel[np.arange(m) % len(sel)])
      self._bank = np.stack(bank)
    return self._bank

  def describe_compute(self) -> str:
    return f"compute dtype float32 (the DQ-VAE's encoder, codebook and decoder){describe_xla_backend()}"

  def sampling_record(self, steps: int, method: str, cfg_scale: float) -> dict:
    """A tokenizer "samples" reconstructions of real images (no solver steps, no guidance)."""
    del steps, method, cfg_scale
    return dict(sample_method="dqvae_reconstruction")

  def generate(self, params, rng: jax.Array, labels: jax.Array, **unused) -> jax.Array:
    """labels [B] -> reconstructions [B, H, W, C] of random real examples of those classes."""
    bank = jnp.asarray(self._reconstruction_bank())
    idx = jax.random.randint(rng, labels.shape, 0, bank.shape[1])
    lab = labels if self.num_classes > 1 else jnp.zeros_like(labels)
    x = bank[lab, idx]
    return self.tokenizer.reconstruct(params, x)[0]

  def images_and_maps(self, params, rng: jax.Array, labels) -> tuple:
    """(reconstructions [N, H, W, C], fine_mask [N, Nc], real inputs [N, H, W, C]) as numpy,
    for the coarse/fine map picture of `adaflow sample`."""
    bank = self._reconstruction_bank()
    labels = np.asarray(labels, np.int32) if self.num_classes > 1 else np.zeros(len(labels), np.int32)
    idx = np.asarray(jax.random.randint(rng, labels.shape, 0, bank.shape[1]))
    x = jnp.asarray(bank[labels, idx])
    rec, mask = jax.jit(self.tokenizer.reconstruct)(params, x)
    return np.asarray(rec), np.asarray(mask), np.asarray(x)
