"""DQ-Transformer objective (stage 2 of DQ): next-position / next-code cross-entropy over the
code sequences of a frozen DQ-VAE tokenizer.

The tokenizer is passed in: `adaflow.methods.build_objective` loads checkpoint `config.tokenizer_step`
(the latest when the run starts, then pinned) of `config.tokenizer_workdir` (set by `adaflow train
--tokenizer <dqvae workdir>`); its parameters are frozen constants of the step.
Each batch is encoded on the fly (the DQ-VAE routes deterministically at encode time), then
    loss = CE(content) + 1/2 (CE(coarse positions) + CE(fine positions)).
`generate` samples sequences with the KV-cached sampler (`dq_transformer.top_k`, `.temperature`)
and decodes them with the tokenizer. With a fixed-map tokenizer (`dqvae.router='fixed'`) the
positions are forced: this is the raster-order transformer baseline over fixed VQ codes.
"""
from __future__ import annotations


import chex
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.config import require
from adaflow.models import dq_transformer as dqt
from adaflow.models import dqvae as dq
from adaflow.models.layers import dtype_from_name
from adaflow.objectives.base import ObjectiveBase
from adaflow.parallel.precision import describe_xla_backend, resolve_compute_dtype
from adaflow.parallel.host import to_host


class DQTransformerObjective(ObjectiveBase):
  """Stage-2 objective; see the module docstring."""

  has_maps = True

  @classmethod
  def validate(cls, config, info) -> None:
    """Checks `config.tokenizer_workdir` and `config.dq_transformer` (no compilation)."""
    del info
    require(bool(config.tokenizer_workdir), "tokenizer_workdir",
            "must name a trained DQ-VAE workdir: pass --tokenizer <dqvae workdir> to `adaflow train`")
    require(isinstance(config.tokenizer_step, int) and config.tokenizer_step >= -1, "tokenizer_step",
            f"must be a checkpoint step of the tokenizer run or -1 (the latest), got {config.tokenizer_step!r}")
    t = config.dq_transformer
    require(int(t.num_heads) >= 1, "dq_transformer.num_heads", f"must be >= 1, got {t.num_heads}")
    require(float(t.mlp_ratio) > 0, "dq_transformer.mlp_ratio", f"must be > 0, got {t.mlp_ratio}")
    require(float(t.position_weight) >= 0, "dq_transformer.position_weight",
            f"must be >= 0 (the position losses' weight), got {t.position_weight}")
    require(int(t.width) >= 1 and int(t.width) % int(t.num_heads) == 0, "dq_transformer.width",
            f"{t.width} is not divisible by dq_transformer.num_heads={t.num_heads}")
    require(int(t.depth_pos) >= 1 and int(t.depth_content) >= 1, "dq_transformer.depth_pos",
            "depth_pos and depth_content must be >= 1")
    require(float(t.temperature) > 0, "dq_transformer.temperature", f"must be > 0, got {t.temperature}")
    require(int(t.top_k) >= 0, "dq_transformer.top_k", f"must be >= 0 (0 = off), got {t.top_k}")
    require(t.dtype in ("auto", "bfloat16", "float32"), "dq_transformer.dtype",
            f"must be auto, bfloat16 or float32, got {t.dtype!r}")

  def __init__(self, config, info, tokenizer):
    """`tokenizer`: (DQTokenizer, its frozen params); loading it from `config.tokenizer_workdir` is
    `adaflow.methods.dq_transformer_objective`."""
    self.config, self.info = config, info
    self.num_classes = info.num_classes
    tok, tok_params = tokenizer
    self.tokenizer, self.tokenizer_params = tok, jax.tree_util.tree_map(jnp.asarray, tok_params)
    self.layout = tok.layout
    t = config.dq_transformer
    self.compute_dtype = resolve_compute_dtype(t.dtype, field="dq_transformer.dtype")   # (name, why)
    self.model = dqt.DQTransformer(self.layout, width=int(t.width), depth_pos=int(t.depth_pos),
                                   depth_content=int(t.depth_content), heads=int(t.num_heads),
                                   mlp_ratio=float(t.mlp_ratio),
                                   dtype=dtype_from_name(self.compute_dtype[0]))
    self.fixed_map = dq.fixed_fine_map(self.layout.nc, tok.fine_fraction) if tok.router == "fixed" else None
    # A fixed map makes every position deterministic: no position loss (the raster baseline).
    self.position_weight = 0.0 if self.fixed_map is not None else float(t.position_weight)

  def init(self, rng: jax.Array):
    z = jnp.zeros((1, self.layout.seq_len), jnp.int32)
    return self.model.init(rng, z, z, z)

  def encode(self, images, labels) -> dict:
    """Frozen tokenizer: images [B, H, W, C], labels [B] -> sequence dict [B, L]."""
    return jax.lax.stop_gradient(self.tokenizer.encode(self.tokenizer_params, images, labels))

  def loss(self, params, batch, rng: jax.Array):
    del rng
    x, y = batch["image"], batch["label"]
    chex.assert_rank(x, 4)
    seq = self.encode(x, y)
    loss, metrics = dqt.sequence_loss(self.model, params, seq, self.position_weight)
    metrics["codes_per_image"] = jnp.mean(seq["length"] - 3).astype(jnp.float32)
    return loss, metrics

  def sample_sequences(self, params, rng: jax.Array, labels: jax.Array, cached: bool = True) -> dict:
    t = self.config.dq_transformer
    return dqt.sample_sequences(self.model, params, rng, labels, top_k=int(t.top_k),
                                temperature=float(t.temperature), cached=cached, fixed_map=self.fixed_map)

  def describe_compute(self) -> str:
    return (f"compute dtype {self.compute_dtype[0]} ({self.compute_dtype[1]}); "
            f"the frozen DQ-VAE tokenizer float32{describe_xla_backend()}")

  def sampling_record(self, steps: int, method: str, cfg_scale: float) -> dict:
    """Top-k sampling of the code sequence (no solver steps, no guidance), decoded by the tokenizer."""
    del steps, method, cfg_scale
    t = self.config.dq_transformer
    return dict(sample_method="dq_transformer", top_k=int(t.top_k), temperature=float(t.temperature))

  def generate(self, params, rng: jax.Array, labels: jax.Array, **unused) -> jax.Array:
    """labels [B] -> images [B, H, W, C] (sampled code sequences decoded by the tokenizer)."""
    seq = self.sample_sequences(params, rng, labels)
    return self.tokenizer.decode(self.tokenizer_params, seq)

  def images_and_maps(self, params, rng: jax.Array, labels) -> tuple:
    """(samples [N, H, W, C], fine_mask [N, Nc], None) as numpy, for `adaflow sample`'s map picture."""
    @jax.jit
    def run(p, r, y):
      seq = self.sample_sequences(p, r, y)
      return self.tokenizer.decode(self.tokenizer_params, seq), dq.sequence_to_codes(self.layout, seq)["fine_mask"]
    # Host copies first: this runs on each process's own device (params may span processes).
    imgs, mask = run(to_host(params), rng, jnp.asarray(labels, jnp.int32))
    return np.asarray(imgs), np.asarray(mask), None
