"""PyTorch DiT checkpoints <-> adaflow DiT parameters (both directions), and orbax export.

Two PyTorch layouts are understood:

* ``"dit"``: the original facebookresearch/DiT (and SiT) `DiT` module: `x_embedder.proj`
  (Conv2d p x p), `t_embedder.mlp.{0,2}`, `y_embedder.embedding_table`, `pos_embed` (fixed
  sin-cos buffer [1, N, D]), `blocks.N.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2,
  adaLN_modulation.1}`, `final_layer.{adaLN_modulation.1, linear}`.
* ``"diffusers"``: `diffusers.DiTTransformer2DModel`: `pos_embed.proj`,
  `transformer_blocks.N.{norm1.emb.timestep_embedder.linear_{1,2}, norm1.emb.class_embedder.
  embedding_table, norm1.linear, attn1.to_{q,k,v}, attn1.to_out.0, ff.net.0.proj, ff.net.2}`,
  `proj_out_1`, `proj_out_2`.

Mapping (torch Linear weight [out, in] -> Dense kernel [in, out]; images NCHW -> NHWC):

    patch conv [D, C, p, p]          -> embed_0/proj/kernel [p*p*C, D]  (patch order row, col, C)
    t MLP, label table [K+1, D]      -> t_embed/fc1, fc2, y_embed       (row K = null class)
    qkv [3D, D] (dit) | to_q/k/v     -> block_i/attn/qkv/kernel [D, 3D] (q, k, v; head-major)
    adaLN [6D, D]                    -> block_i/adaLN/kernel [D, 6D]    (same chunk order)
    final adaLN [2D, D], linear      -> final/adaLN, head_0/linear      (p*p*out_C, order row, col, C)

Conditioning embedders. adaflow (like the original DiT) has one timestep/label embedder shared
by all blocks. diffusers gives every block its own copy and the final layer reuses block 0's;
converted official checkpoints hold identical copies. We convert block 0's and *require* every
other block's copy to equal it (max abs difference <= `embedder_atol`); a checkpoint whose copies
differ (e.g. one fine-tuned with diffusers) cannot be represented and is rejected with the list of
differing keys. Exporting to diffusers writes the shared embedder into every block.

Learned sigma: a checkpoint whose head emits 2C channels (DiT's `learn_sigma=True`) needs
`config.model.learn_sigma=True`; adaflow keeps those weights (so a round trip is lossless) and
ignores the extra C output channels.

Things the state dict cannot tell: the number of heads (only D is visible; it must match the
config), and time conventions. The model input t in [0, 1] is multiplied by
`model.time_scale` (1000 -> DiT's timestep index) and the sinusoidal frequencies use
`model.time_freq_shift` 0 (dit) or 1 (diffusers), which the converter checks. LayerNorm eps:
adaflow uses 1e-6 everywhere, like the original DiT; diffusers' default `norm_eps=1e-5` applies to
the pre-MLP LayerNorm only, a relative difference of ~1e-5 in that normalisation (the parity test
measures ~6e-6 max abs output difference for that case; bit-level parity needs `norm_eps=1e-6`).
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Optional, Sequence

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow import data as data_lib
from adaflow import storage
from adaflow.models.dit import dit_from_config
from adaflow.models.patchify import stage_position_embedding
from adaflow.train import checkpoint as ckpt
from adaflow import methods
from adaflow.train.loop import Trainer
from adaflow.train.sharded_state import init_state

LAYOUTS = ("dit", "diffusers")

ToJax = Callable[..., jax.Array]           # torch arrays (in `keys` order) -> adaflow array
ToTorch = Callable[[jax.Array], Sequence[jax.Array]]   # adaflow array -> torch arrays


@dataclasses.dataclass(frozen=True)
class Entry:
  """One adaflow parameter and the torch tensors it is made of."""
  path: tuple[str, ...]          # path under params['params']
  keys: tuple[str, ...]          # torch state-dict keys
  to_jax: ToJax
  to_torch: ToTorch


def _linear_w(prefix: str, path) -> Entry:
  return Entry(tuple(path), (prefix,), lambda w: w.T, lambda k: (k.T,))


def _same(key: str, path) -> Entry:
  return Entry(tuple(path), (key,), lambda w: w, lambda k: (k,))


def _dense(prefix: str, path) -> list[Entry]:
  """torch Linear `prefix.weight/bias` <-> Dense `path/kernel, path/bias`."""
  return [_linear_w(prefix + ".weight", tuple(path) + ("kernel",)),
          _same(prefix + ".bias", tuple(path) + ("bias",))]


def _patch_conv(prefix: str, path, patch: int, channels: int) -> list[Entry]:
  """Conv2d weight [D, C, p, p] <-> kernel [p*p*C, D] with patch vector order (row, col, C)."""
  def to_jax(w):
    return w.transpose(2, 3, 1, 0).reshape(patch * patch * channels, -1)

  def to_torch(k):
    return (k.reshape(patch, patch, channels, -1).transpose(3, 2, 0, 1),)
  return [Entry(tuple(path) + ("kernel",), (prefix + ".weight",), to_jax, to_torch),
          _same(prefix + ".bias", tuple(path) + ("bias",))]


def _split_qkv(prefix: str, path) -> list[Entry]:
  """diffusers to_q/to_k/to_v [HD, D] each <-> qkv kernel [D, 3*HD] (q | k | v)."""
  keys_w = tuple(f"{prefix}.to_{n}.weight" for n in "qkv")
  keys_b = tuple(f"{prefix}.to_{n}.bias" for n in "qkv")
  return [
      Entry(tuple(path) + ("kernel",), keys_w, lambda q, k, v: jnp.concatenate([q.T, k.T, v.T], axis=1),
            lambda kern: tuple(x.T for x in jnp.split(kern, 3, axis=1))),
      Entry(tuple(path) + ("bias",), keys_b, lambda q, k, v: jnp.concatenate([q, k, v]),
            lambda b: tuple(jnp.split(b, 3))),
  ]


def _shared_entries(layout: str, cond_prefix: str) -> list[Entry]:
  """The timestep and label embedders (shared in adaflow)."""
  if layout == "dit":
    return (_dense("t_embedder.mlp.0", ("t_embed", "fc1")) + _dense("t_embedder.mlp.2", ("t_embed", "fc2"))
            + [_same("y_embedder.embedding_table.weight", ("y_embed",))])
  p = cond_prefix
  return (_dense(f"{p}.timestep_embedder.linear_1", ("t_embed", "fc1"))
          + _dense(f"{p}.timestep_embedder.linear_2", ("t_embed", "fc2"))
          + [_same(f"{p}.class_embedder.embedding_table.weight", ("y_embed",))])


def _diffusers_cond_prefix(i: int) -> str:
  return f"transformer_blocks.{i}.norm1.emb"


def entries(layout: str, depth: int, patch: int, in_channels: int) -> list[Entry]:
  """The full mapping for a single-stage DiT of `depth` blocks in `layout`."""
  if layout not in LAYOUTS:
    raise ValueError(f"unknown checkpoint layout {layout!r}; use one of {LAYOUTS}")
  if layout == "dit":
    out = _patch_conv("x_embedder.proj", ("embed_0", "proj"), patch, in_channels)
    out += _shared_entries("dit", "")
    for i in range(depth):
      b, t = ("block_%d" % i,), f"blocks.{i}"
      out += _dense(f"{t}.adaLN_modulation.1", b + ("adaLN",))
      out += _dense(f"{t}.attn.qkv", b + ("attn", "qkv"))
      out += _dense(f"{t}.attn.proj", b + ("attn", "proj"))
      out += _dense(f"{t}.mlp.fc1", b + ("mlp", "fc1"))
      out += _dense(f"{t}.mlp.fc2", b + ("mlp", "fc2"))
    out += _dense("final_layer.adaLN_modulation.1", ("final", "adaLN"))
    out += _dense("final_layer.linear", ("head_0", "linear"))
    return out
  out = _patch_conv("pos_embed.proj", ("embed_0", "proj"), patch, in_channels)
  out += _shared_entries("diffusers", _diffusers_cond_prefix(0))
  for i in range(depth):
    b, t = ("block_%d" % i,), f"transformer_blocks.{i}"
    out += _dense(f"{t}.norm1.linear", b + ("adaLN",))
    out += _split_qkv(f"{t}.attn1", b + ("attn", "qkv"))
    out += _dense(f"{t}.attn1.to_out.0", b + ("attn", "proj"))
    out += _dense(f"{t}.ff.net.0.proj", b + ("mlp", "fc1"))
    out += _dense(f"{t}.ff.net.2", b + ("mlp", "fc2"))
  out += _dense("proj_out_1", ("final", "adaLN"))
  out += _dense("proj_out_2", ("head_0", "linear"))
  return out


def _duplicate_cond_keys(depth: int) -> dict[str, str]:
  """diffusers: key of block i >= 1's embedder copy -> the block-0 key it must equal."""
  out = {}
  for e in _shared_entries("diffusers", _diffusers_cond_prefix(0)):
    for key in e.keys:
      for i in range(1, depth):
        out[key.replace(_diffusers_cond_prefix(0), _diffusers_cond_prefix(i), 1)] = key
  return out


# ---------------------------------------------------------------------------------------------
# loading


def _unwrap(obj: Any, path: str) -> dict:
  """A training checkpoint dict {'model', 'ema', ...} -> its EMA (else model) state dict."""
  if isinstance(obj, dict):
    for k in ("ema", "model", "state_dict"):
      if k in obj and isinstance(obj[k], dict):
        return obj[k]
    return obj
  raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict safely: `.safetensors`, or `.pt/.pth/.bin` through
  `torch.load(weights_only=True)` (no pickled code runs). Returns float32 numpy arrays."""
  if not os.path.exists(path):
    raise ValueError(f"--from: checkpoint file {path!r} does not exist")
  if path.endswith(".safetensors"):
    try:
      from safetensors.torch import load_file
    except ImportError as e:
      raise ValueError("reading .safetensors needs `pip install safetensors torch`") from e
    try:
      raw = load_file(path, device="cpu")
    except Exception as e:  # pylint: disable=broad-except  # a torn or foreign file (SafetensorError, OSError)
      raise ValueError(f"{path}: not a readable .safetensors file ({type(e).__name__}: {str(e)[:200]})") from None
  else:
    raw = _unwrap(storage.read_torch_file(path, "--from"), path)
  out = {}
  for k, v in raw.items():
    if not hasattr(v, "detach"):
      raise ValueError(f"{path}: entry {k!r} is not a tensor ({type(v).__name__})")
    out[k] = v.detach().to("cpu").float().numpy()
  return out


# ---------------------------------------------------------------------------------------------
# checkpoint <-> config consistency


def _single_stage_model(model) -> None:
  if model.num_stages != 1:
    raise ValueError("config.model.stage_groups: PyTorch DiT checkpoints have one patch stage; convert with "
                     "stage_groups=((1, 1),) (add stages afterwards by fine-tuning)")


def _block_indices(keys, pattern: str) -> set[int]:
  rx = re.compile(pattern)
  return {int(m.group(1)) for k in keys for m in [rx.match(k)] if m}


def describe_checkpoint(sd: dict, layout: str) -> dict:
  """Hyper-parameters visible in a state dict: depth, hidden_size, patch_size, in_channels,
  out_channels, num_classes (label-table rows - 1), num_tokens (dit layout only)."""
  info = {}
  if layout == "dit":
    info["depth"] = len(_block_indices(sd, r"blocks\.(\d+)\."))
    conv, table, head = "x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight"
    if "pos_embed" in sd:
      info["num_tokens"] = int(np.prod(sd["pos_embed"].shape[:-1]))
  else:
    info["depth"] = len(_block_indices(sd, r"transformer_blocks\.(\d+)\."))
    conv, table, head = ("pos_embed.proj.weight", _diffusers_cond_prefix(0) + ".class_embedder.embedding_table.weight",
                         "proj_out_2.weight")
  if conv in sd and sd[conv].ndim == 4:
    d, c, p, _ = sd[conv].shape
    info.update(hidden_size=int(d), in_channels=int(c), patch_size=int(p))
    if head in sd and sd[head].ndim == 2:
      info["out_channels"] = int(sd[head].shape[0]) // (int(p) * int(p))
  if table in sd:
    info["num_classes"] = int(sd[table].shape[0]) - 1
  return info


def _config_problems(model, info: dict, layout: str) -> list[str]:
  """Disagreements between the checkpoint's visible hyper-parameters and the adaflow model."""
  c = model.in_channels
  want = {"depth": ("model.depth", len(model.block_specs)), "hidden_size": ("model.hidden_size", model.hidden_size),
          "patch_size": ("model.patch_size", model.patch_size), "in_channels": ("data.channels", c),
          "num_classes": ("the dataset's number of classes", model.num_classes),
          "out_channels": ("model.learn_sigma", 2 * c if model.learn_sigma else c)}
  n_tokens = (model.image_size[0] // model.patch_size) * (model.image_size[1] // model.patch_size)
  want["num_tokens"] = ("data.image_size / model.patch_size", n_tokens)
  problems = []
  for k, (field, v) in want.items():
    if k in info and info[k] != v:
      hint = ""
      if k == "out_channels":
        hint = (f" (checkpoint emits {info[k]} channels for {c} input channels: set model.learn_sigma="
                f"{info[k] == 2 * c})")
      problems.append(f"config disagrees with checkpoint: {k} is {info[k]} in the checkpoint but {v} from "
                      f"config.{field}" + hint)
  shift = 0.0 if layout == "dit" else 1.0
  if float(model.time_freq_shift) != shift:
    problems.append(f"config.model.time_freq_shift is {model.time_freq_shift} but the {layout} layout uses "
                    f"{shift:g} (set --config.model.time_freq_shift={shift:g})")
  return problems


def _abstract_params(model) -> dict:
  """{'params': ShapeDtypeStruct tree} of `model` (no compile, no allocation)."""
  h, w = model.image_size
  x = jnp.zeros((1, h, w, model.in_channels), jnp.float32)
  t, y = jnp.zeros((1,), jnp.float32), jnp.zeros((1,), jnp.int32)
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, y)
  return nn.meta.unbox(boxed)


def _fixed_pos_embed(model) -> np.ndarray:
  return np.asarray(stage_position_embedding(model.hidden_size, tuple(model.image_size), model.patch_size, (1, 1)))


def torch_to_adaflow(state_dict: dict, layout: str, model, *, embedder_atol: float = 0.0,
                     pos_atol: float = 1e-4) -> dict:
  """PyTorch state dict (name -> array) in `layout` -> adaflow params {'params': ...} for `model`.

  Every problem is collected first and reported in ONE ValueError: keys the mapping does not
  produce (extra), keys it needs (missing), shape mismatches, config/checkpoint disagreements,
  diffusers per-block embedders that differ from block 0's, a `pos_embed` buffer that is not the
  fixed sin-cos code. Returns float32 numpy arrays.
  """
  _single_stage_model(model)
  abstract = traverse_util.flatten_dict(_abstract_params(model)["params"])   # {path: ShapeDtypeStruct}
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  problems = _config_problems(model, describe_checkpoint(sd, layout), layout)
  table = entries(layout, len(model.block_specs), model.patch_size, model.in_channels)
  used, out = set(), {}
  mapped_paths = {e.path for e in table}
  for path in sorted(abstract):
    if path not in mapped_paths:
      problems.append(f"adaflow parameter {'/'.join(path)} has no source in the {layout} layout")
  for e in table:
    target = abstract.get(e.path)
    if target is None:
      problems.append(f"mapping targets {'/'.join(e.path)}, which this model does not have")
      continue
    used.update(e.keys)
    missing = [k for k in e.keys if k not in sd]
    if missing:
      problems.extend(f"missing key {k} (for {'/'.join(e.path)})" for k in missing)
      continue
    expected = jax.eval_shape(e.to_torch, jax.ShapeDtypeStruct(target.shape, jnp.float32))
    bad = [(k, sd[k].shape, x.shape) for k, x in zip(e.keys, expected) if tuple(sd[k].shape) != tuple(x.shape)]
    if bad:
      problems.extend(f"shape mismatch for {k}: checkpoint {tuple(s)}, expected {tuple(x)} "
                      f"(adaflow {'/'.join(e.path)} {tuple(target.shape)})" for k, s, x in bad)
      continue
    out[e.path] = np.asarray(e.to_jax(*[jnp.asarray(sd[k], jnp.float32) for k in e.keys]), np.float32)
  # fixed buffers and duplicated embedders
  pos_key = "pos_embed" if layout == "dit" else "pos_embed.pos_embed"
  if pos_key in sd:
    used.add(pos_key)
    ref = _fixed_pos_embed(model)
    got = sd[pos_key].reshape(-1, sd[pos_key].shape[-1])
    if got.shape != ref.shape:
      problems.append(f"shape mismatch for {pos_key}: checkpoint {tuple(sd[pos_key].shape)}, expected "
                      f"(1, {ref.shape[0]}, {ref.shape[1]}) (check data.image_size and model.patch_size)")
    elif float(np.max(np.abs(got - ref))) > pos_atol:
      problems.append(f"{pos_key} is not the fixed 2D sin-cos position embedding (max abs diff "
                      f"{float(np.max(np.abs(got - ref))):.3g}); learned position embeddings are not supported")
  if layout == "diffusers":
    differing = []
    for key, ref_key in _duplicate_cond_keys(len(model.block_specs)).items():
      if key not in sd:
        continue   # reported as extra/missing through the block structure if needed
      used.add(key)
      if ref_key in sd and (sd[key].shape != sd[ref_key].shape or
                            float(np.max(np.abs(sd[key] - sd[ref_key]))) > embedder_atol):
        differing.append(key)
    if differing:
      problems.append("adaflow shares one timestep/label embedder across blocks, but these per-block diffusers "
                      "embedder weights differ from block 0's (transformer_blocks.0.norm1.emb.*): "
                      + ", ".join(differing))
  extra = sorted(k for k in sd if k not in used)
  problems.extend(f"unexpected key {k} (no adaflow parameter maps to it)" for k in extra)
  if problems:
    raise ValueError(f"cannot convert the {layout}-layout checkpoint into this adaflow model "
                     f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
  return {"params": traverse_util.unflatten_dict(out)}


def adaflow_to_torch(params: dict, layout: str, model) -> dict[str, np.ndarray]:
  """adaflow params {'params': ...} -> PyTorch state dict (name -> float32 numpy) in `layout`.

  diffusers: the shared embedder is written into every block. dit: `pos_embed` is included as
  the fixed buffer [1, N, D]. Load with `torch.from_numpy` + `load_state_dict`.
  """
  _single_stage_model(model)
  p = traverse_util.flatten_dict(params["params"] if "params" in params else params)
  sd = {}
  for e in entries(layout, len(model.block_specs), model.patch_size, model.in_channels):
    vals = e.to_torch(jnp.asarray(p[e.path], jnp.float32))
    for k, v in zip(e.keys, vals):
      sd[k] = np.array(v, np.float32)   # writable copy (torch.from_numpy needs one)
  if layout == "dit":
    sd["pos_embed"] = np.array(_fixed_pos_embed(model)[None])
  else:
    for key, ref_key in _duplicate_cond_keys(len(model.block_specs)).items():
      sd[key] = sd[ref_key].copy()
  return sd


# ---------------------------------------------------------------------------------------------
# orbax export


def write_checkpoint(params: dict, config, out_dir: str, log=print) -> str:
  """Writes `params` as step 0 of an adaflow run in `out_dir` (orbax, same layout as `train`),
  so that `adaflow sample|eval --workdir out_dir` and `adaflow train --init out_dir` work.
  Returns the checkpoint directory."""
  if storage.listdir(ckpt.checkpoint_dir(out_dir)):
    raise ValueError(f"--out: {ckpt.checkpoint_dir(out_dir)} already holds checkpoints; choose an empty directory")
  tr = Trainer(config, out_dir, log=log)
  abstract = tr.abstract_state.params
  got = jax.tree_util.tree_structure(params)
  if got != jax.tree_util.tree_structure(abstract):
    raise ValueError("converted parameters do not have the structure of the model built from --config "
                     "(check config.model against the checkpoint)")
  storage.makedirs(out_dir)
  storage.write_text(os.path.join(out_dir, "config.json"), config.to_json_best_effort(indent=2))
  state = init_state(tr.objective, tr.tx, tr.mesh, tr.root_rng, tr.shardings, params=jax.tree_util.tree_map(
      jnp.asarray, params))
  manager = ckpt.make_manager(out_dir, async_save=False)
  meta = dict(tr.meta(), converted=True)
  ckpt.save(manager, 0, state, meta, force=True)
  manager.wait_until_finished()
  manager.close()
  return ckpt.checkpoint_dir(out_dir)


def convert_file(path: str, layout: str, config, out_dir: Optional[str] = None, log=print) -> dict:
  """`adaflow convert`: read `path`, convert for the model of `config`, optionally write `out_dir`.
  Errors (bad layout, unreadable file, any mapping problem) are ValueErrors raised before any
  compilation."""
  if layout not in LAYOUTS:
    raise ValueError(f"--format must be one of {LAYOUTS}, got {layout!r}")
  methods.validate(config)
  info = data_lib.get_info(config.data)
  methods.validate(config, info)
  model = dit_from_config(config.model, info.image_shape, info.num_classes)
  if out_dir:
    storage.check_writable(out_dir, "--out")   # creates it; a bad path fails before the file is read
  sd = load_state_dict(path)
  params = torch_to_adaflow(sd, layout, model)
  log(f"converted {len(sd)} tensors ({sum(v.size for v in sd.values()) / 1e6:.2f}M values) from {path} "
      f"({layout} layout)")
  if out_dir:
    d = write_checkpoint(params, config, out_dir, log=log)
    log(f"wrote adaflow checkpoint {d}/0")
  return params
