"""The PPFlow patch schedule (arXiv 2506.23543): which patch shape serves which part of flow time.

A schedule is written in the config in *pixels*:

    config.model.patch_size = 2                       # base patch p
    config.model.stages = ((0.5, (4, 4)),             # t in [0, 0.5]    : 2p x 2p patches
                           (0.75, (2, 4)),            # t in (0.5, 0.75] : p rows x 2p columns
                           (1.0, (2, 2)))             # t in (0.75, 1]   : p x p (the dense DiT)

Stage s covers `[t_end[s-1], t_end[s])` (stage 0 starts at 0, the last stage holds t = 1): the
buckets of `adaflow.flow.partition.TimePartition`, whose `segments` put the stage boundaries on
the sampling grid. Time runs from noise (t = 0) to data (t = 1), so the coarse stages come first. Each patch shape must be a multiple of
the base patch (the multiple is the space-to-depth grouping `(gh, gw)` handed to the DiT as
`stage_groups`) and must divide the image. Everything in this module is plain Python / numpy
(static: it decides shapes).

Also here: converting a trained one-level DiT into a multi-stage one (`convert_dense_params`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow.flow.partition import TimePartition


@dataclasses.dataclass(frozen=True)
class PatchSchedule:
  """A validated PPFlow schedule.

  t_ends: stage end times, strictly increasing, last == 1.0.
  patch_shapes: per-stage patch (ph, pw) in pixels.
  groups: per-stage space-to-depth grouping (ph / p, pw / p): the DiT's `stage_groups`.
  base_patch: p.  image_size: (H, W).
  """
  t_ends: tuple[float, ...]
  patch_shapes: tuple[tuple[int, int], ...]
  groups: tuple[tuple[int, int], ...]
  base_patch: int
  image_size: tuple[int, int]

  @property
  def num_stages(self) -> int:
    return len(self.t_ends)

  @property
  def t_starts(self) -> tuple[float, ...]:
    return (0.0,) + self.t_ends[:-1]

  @property
  def spans(self) -> tuple[float, ...]:
    return tuple(e - s for s, e in zip(self.t_starts, self.t_ends))

  def tokens(self, stage: int) -> int:
    """Token count N of a stage."""
    (h, w), (ph, pw) = self.image_size, self.patch_shapes[stage]
    return (h // ph) * (w // pw)

  def values_per_token(self, stage: int, channels: int) -> int:
    """Pixel values one token of `stage` carries in and out: ph * pw * channels."""
    ph, pw = self.patch_shapes[stage]
    return ph * pw * int(channels)

  def over_capacity(self, channels: int, hidden_size: int) -> tuple[int, ...]:
    """Stages whose tokens carry more pixel values than the model width. A velocity (or noise)
    target holds a full-resolution noise part that the head must rebuild from one hidden vector
    per token: with more values than dimensions that part cannot pass (the output layer's rank is
    at most the width), so such a stage keeps a loss floor however long it trains. A data
    prediction (flow.prediction = "data") targets the low-dimensional image instead."""
    return tuple(s for s in range(self.num_stages) if self.values_per_token(s, channels) > int(hidden_size))

  @property
  def partition(self) -> TimePartition:
    """The stages as buckets of flow time (edges 0, t_end[0], ..., 1)."""
    return TimePartition((0.0,) + self.t_ends)


def _field_error(field: str, message: str) -> ValueError:
  return ValueError(f"config.{field}: {message}")


def parse_stages(stages: Any, base_patch: int, image_size: Sequence[int]) -> PatchSchedule:
  """Validates `model.stages = [(t_end, (ph, pw)), ...]` (pixels) and returns the schedule.

  Raises ValueError naming `model.stages` (or `model.patch_size`) and saying how to fix it.
  """
  example = "e.g. ((0.5, (2*p, 2*p)), (1.0, (p, p))) with p = model.patch_size"
  if stages is None or isinstance(stages, (str, bytes)) or len(stages) == 0:
    raise _field_error("model.stages", f"must be a non-empty list of (t_end, (patch_h, patch_w)), {example}; "
                       f"got {stages!r}")
  p = int(base_patch)
  if p < 1:
    raise _field_error("model.patch_size", f"must be >= 1, got {base_patch}")
  h, w = int(image_size[0]), int(image_size[1])
  t_ends, shapes, groups = [], [], []
  for i, item in enumerate(stages):
    try:
      t_end, shape = item
      ph, pw = shape
      t_end, ph, pw = float(t_end), int(ph), int(pw)
    except (TypeError, ValueError):
      raise _field_error(f"model.stages[{i}]", f"must be (t_end, (patch_h, patch_w)), {example}; got {item!r}") from None
    if not 0.0 < t_end <= 1.0:
      raise _field_error(f"model.stages[{i}]", f"t_end must be in (0, 1], got {t_end}")
    if t_ends and t_end <= t_ends[-1]:
      raise _field_error(f"model.stages[{i}]", f"stage end times must increase strictly; {t_end} follows "
                         f"{t_ends[-1]}. List stages from noise (t = 0) to data (t = 1)")
    if ph < p or pw < p or ph % p or pw % p:
      raise _field_error(f"model.stages[{i}]", f"patch {ph}x{pw} is not a multiple of the base patch "
                         f"model.patch_size={p}; use multiples of {p} (e.g. {2 * p}x{2 * p})")
    if h % ph or w % pw:
      raise _field_error(f"model.stages[{i}]", f"patch {ph}x{pw} does not divide the image {h}x{w} "
                         f"(data.image_size); choose a patch shape that divides it")
    t_ends.append(t_end)
    shapes.append((ph, pw))
    groups.append((ph // p, pw // p))
  if abs(t_ends[-1] - 1.0) > 1e-9:
    raise _field_error("model.stages", f"the last stage must end at t = 1.0 (data), got {t_ends[-1]}; "
                       f"add a final (1.0, ({p}, {p})) stage")
  t_ends[-1] = 1.0
  if len(set(groups)) != len(groups):
    raise _field_error("model.stages", f"two stages use the same patch shape ({shapes}); merge them "
                       f"into one stage (each stage has its own embedding and head)")
  return PatchSchedule(tuple(t_ends), tuple(shapes), tuple(groups), p, (h, w))


def schedule_from_config(config, image_shape: Sequence[int]) -> PatchSchedule:
  """The PPFlow patch schedule of `config` for images [H, W, C]."""
  return parse_stages(config.model.stages, config.model.patch_size, image_shape[:2])


# ---- time sampling per stage ---------------------------------------------------------------

def batch_split(batch_size: int, fractions: Sequence[float]) -> tuple[int, ...]:
  """Integer per-stage batch sizes summing to `batch_size`, proportional to `fractions`
  (largest remainder), each at least 1 (every stage's embedding and head get a gradient)."""
  k = len(fractions)
  if batch_size < k:
    raise ValueError(f"config.train.batch_size: {batch_size} is smaller than the number of PPFlow stages "
                     f"{k}; each stage needs at least one example per batch")
  f = np.asarray(fractions, np.float64)
  f = f / f.sum()
  raw = f * batch_size
  counts = np.maximum(np.floor(raw).astype(int), 1)
  while counts.sum() > batch_size:          # only possible through the max(., 1) floor
    i = int(np.argmax(np.where(counts > 1, counts - raw, -np.inf)))
    counts[i] -= 1
  order = np.argsort(-(raw - counts), kind="stable")
  for i in range(batch_size - int(counts.sum())):
    counts[order[i % k]] += 1
  return tuple(int(c) for c in counts)


# ---- converting a one-level (dense) DiT into a multi-stage one -----------------------------

def repeat_embed_kernel(kernel: np.ndarray, patch: int, group: tuple[int, int], channels: int) -> np.ndarray:
  """Dense patch-embedding kernel [p*p*C, D] -> stage kernel [p*p*k*C, D], k = gh*gw.

  The stage input vector is `patches(space_to_depth(x))`, ordered (row r, col s, row offset a,
  col offset b, channel c); the dense one is ordered (r, s, c). Entry (r, s, a, b, c) of the new
  kernel is W[r, s, c] / k: the stage token embeds the mean over (a, b) of the k interleaved
  sub-images, i.e. the 2x-average-pooled p x p patch of its (gh p) x (gw p) region.
  """
  k = group[0] * group[1]
  pp, d = patch * patch, kernel.shape[-1]
  w = np.asarray(kernel).reshape(pp, 1, channels, d)
  return np.broadcast_to(w, (pp, k, channels, d)).reshape(pp * k * channels, d) / k


def repeat_head_kernel(kernel: np.ndarray, bias: np.ndarray, patch: int, group: tuple[int, int],
                       channels: int) -> tuple[np.ndarray, np.ndarray]:
  """Dense head [D, p*p*C] (+ bias [p*p*C]) -> stage head [D, p*p*k*C] (+ [p*p*k*C]).

  The stage head's outputs are ordered (r, s, a, b, c) before depth-to-space; copying W[:, r, s, c]
  to every (a, b) gives every sub-image the same prediction: the dense prediction, nearest-neighbour
  upsampled by (gh, gw) over the token's region.
  """
  k = group[0] * group[1]
  pp, d = patch * patch, kernel.shape[0]
  w = np.asarray(kernel).reshape(d, pp, 1, channels)
  w = np.broadcast_to(w, (d, pp, k, channels)).reshape(d, pp * k * channels)
  b = np.asarray(bias).reshape(pp, 1, channels)
  b = np.broadcast_to(b, (pp, k, channels)).reshape(pp * k * channels)
  return w, b


def convert_dense_params(dense: Any, target: Any, groups: Sequence[tuple[int, int]], patch: int,
                         in_channels: int, out_channels: int) -> Any:
  """Initialises a multi-stage DiT from a trained one-level DiT (arXiv 2506.23543).

  dense: unboxed {'params': ...} of a DiT with `stage_groups=((1, 1),)`.
  target: unboxed {'params': ...} of the multi-stage DiT (a fresh init: its `level_embed`, drawn
    N(0, 0.02), is kept as the spec asks); shapes define the result.
  groups: the target's `stage_groups`. out_channels: head channels per pixel (2C if learn_sigma).
  Every other leaf (blocks, adaLN, time/label embeddings, final layer) is copied from `dense`.
  Patch embedding of a stage merging k sub-patches: kernel repeated k times along the grouped
  input channels / k, bias copied; head: kernel and bias repeated k times along the outputs.
  """
  src, dst = dense["params"], target["params"]
  if "embed_0" not in src or "embed_1" in src:
    raise ValueError("convert-stages: the source checkpoint must be a one-level DiT "
                     "(model.stage_groups=((1, 1),)); got params with "
                     f"{sorted(k for k in src if k.startswith('embed_'))}")
  out = {}
  for name, value in dst.items():
    if name.startswith("embed_") or name.startswith("head_") or name == "level_embed":
      continue
    if name not in src:
      raise ValueError(f"convert-stages: the source checkpoint has no parameter {name!r}; its model "
                       f"(width, depth, heads) must match the target config's model")
    out[name] = jax.tree_util.tree_map(np.asarray, src[name])
  emb, head = src["embed_0"]["proj"], src["head_0"]["linear"]
  if np.shape(emb["kernel"])[0] != patch * patch * in_channels:
    raise ValueError(f"convert-stages: the source's patch embedding takes {np.shape(emb['kernel'])[0]} values per token, "
                     f"the target's base patch {patch}x{patch}x{in_channels}; patch_size and channels must agree")
  for s, g in enumerate(groups):
    g = tuple(int(v) for v in g)
    out[f"embed_{s}"] = {"proj": {
        "kernel": repeat_embed_kernel(np.asarray(emb["kernel"]), patch, g, in_channels),
        "bias": np.asarray(emb["bias"]).copy()}}
    w, b = repeat_head_kernel(np.asarray(head["kernel"]), np.asarray(head["bias"]), patch, g, out_channels)
    out[f"head_{s}"] = {"linear": {"kernel": w, "bias": b}}
  if "level_embed" in dst:
    out["level_embed"] = np.asarray(dst["level_embed"])
  result = {"params": out}
  want = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), target)
  got = jax.tree_util.tree_map(lambda x: (tuple(np.shape(x)), str(np.asarray(x).dtype)), result)
  if jax.tree_util.tree_structure(want) != jax.tree_util.tree_structure(got) or want != got:
    raise ValueError("convert-stages: the source checkpoint's model does not match the target config "
                     "(hidden_size, depth, num_heads, patch_size, channels must agree)")
  return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), result)


def convert_params_for(objective, dense: Any, rng: jax.Array) -> Any:
  """`convert_dense_params` for a PPFlow objective (objective 'ppflow', adaflow.methods):
  the level embedding comes from a fresh init with `rng`. Returns unboxed {'params': ...}."""
  model = objective.model
  target = jax.device_get(jax.jit(lambda r: nn.meta.unbox(objective.init(r)))(rng))
  out_c = model.in_channels * (2 if model.learn_sigma else 1)
  return convert_dense_params(jax.device_get(dense), target, model.stage_groups, model.patch_size,
                              model.in_channels, out_c)
