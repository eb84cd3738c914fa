"""The FID Inception-v3 (TensorFlow graph `inception-2015-12-05`) in Flax, NHWC.

This is the network every standard FID tool uses: the ADM evaluator (TF graph), pytorch-fid,
torch-fidelity and clean-fid. It differs from torchvision's / Keras's Inception-v3 in three places,
all reproduced here:

* the average-pool branch of the A, C and first E blocks (`Mixed_5b..5d`, `Mixed_6b..6e`,
  `Mixed_7b`) averages over the *unpadded* window (torch `count_include_pad=False`);
* the pool branch of the last E block (`Mixed_7c`) is a 3x3 **max** pool (stride 1, pad 1);
* the classifier has 1008 outputs (`fc`), and batch norm uses eps = 1e-3.

Features for FID are the 2048-d global average of `Mixed_7c` ("pool_3"). Spatial features for
sFID (Nash et al., arXiv 2103.03841, as computed by ADM's evaluator, arXiv 2105.05233) are the
first 7 channels of the TF graph's `mixed_6/conv` (the ReLU output of `Mixed_6d.branch1x1`,
17x17 at 299 input), flattened: [17 * 17 * 7 = 2023].

Preprocessing (`preprocess`): images are resized to 299x299 with bilinear interpolation,
`align_corners=False`, in one of two flavours, chosen by `resize=`:

* ``"tf"`` (default): TensorFlow 1.x `ResizeBilinear` (`half_pixel_centers=False`, source
  coordinate `dst * in / out`) followed by `(v - 128) / 128` on 0..255 pixel values. This is what
  the TF graph does internally, so it is what the ADM evaluator (whose ImageNet 64x64 reference
  batch every ImageNet64 FID in the literature uses), EDM's `fid.py` and torch-fidelity compute.
* ``"pytorch"``: `torch.nn.functional.interpolate(mode='bilinear', align_corners=False)`
  (half-pixel centres) followed by `v / 127.5 - 1`: pytorch-fid's default.

The two give FIDs that differ slightly; results files record which one was used.

Parameters are a plain pytree keyed like the PyTorch state dict (`Mixed_5b/branch1x1/conv/kernel`
<-> `Mixed_5b.branch1x1.conv.weight`), so `load_inception_params` converts the standard
`pt_inception-2015-12-05-6726825d.pth` file (pytorch-fid's release asset; torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth` has the same keys) without any renaming table.
Weights are never downloaded here: the user gives a path.

All convolutions and matmuls use `Precision.HIGHEST` so that TPUs do not silently run them in
bfloat16 passes (FID is sensitive to feature precision).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Optional, Tuple

import chex
from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from adaflow import storage

INPUT_SIZE = 299
FEATURE_DIM = 2048
SPATIAL_CHANNELS = 7   # ADM evaluator: spatial features = mixed_6/conv[..., :7]
NUM_LOGITS = 1008
BN_EPS = 1e-3
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILENAME)
RESIZE_MODES = ("tf", "pytorch")
_HIGHEST = jax.lax.Precision.HIGHEST


def default_weights_path() -> str:
  """Where `adaflow fid` looks for the weights when `--inception` is not given."""
  return os.path.join(os.path.expanduser("~"), ".cache", "adaflow", WEIGHTS_FILENAME)


# ----------------------------------------------------------------------------------------------
# Resize to 299 and scaling to [-1, 1].
# ----------------------------------------------------------------------------------------------

def _interp_matrix(in_size: int, out_size: int, mode: str) -> np.ndarray:
  """[out_size, in_size] float32 matrix M with resized = M @ signal (one spatial axis)."""
  # Source coordinates in float32 arithmetic, as both TF's and torch's kernels compute them.
  scale = np.float32(in_size / out_size)
  dst = np.arange(out_size, dtype=np.float32)
  if mode == "tf":
    src = dst * scale                              # TF1 legacy (half_pixel_centers=False)
  elif mode == "pytorch":                          # torch align_corners=False, clamped at 0
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
  else:
    raise ValueError(f"resize={mode!r} is not one of {RESIZE_MODES}.")
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = (src - lo).astype(np.float32)
  m = np.zeros((out_size, in_size), np.float32)
  m[np.arange(out_size), lo] += 1.0 - frac
  m[np.arange(out_size), hi] += frac
  return m


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE, mode: str = "tf") -> jax.Array:
  """Bilinear resize, `align_corners=False`, without antialiasing.

  images: [B, H, W, C] float -> [B, size, size, C] float32. `mode` "tf" is TF1 `ResizeBilinear`
  (the FID graph's own resize), "pytorch" is `F.interpolate(mode='bilinear', align_corners=False)`.
  Implemented as two small interpolation matmuls (exact, and fast on TPU).
  """
  chex.assert_rank(images, 4)
  _, h, w, _ = images.shape
  x = images.astype(jnp.float32)
  if (h, w) == (size, size):
    return x
  mh = jnp.asarray(_interp_matrix(h, size, mode))
  mw = jnp.asarray(_interp_matrix(w, size, mode))
  x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=_HIGHEST)
  return jnp.einsum("pw,bowc->bopc", mw, x, precision=_HIGHEST)


def preprocess(pixels: jax.Array, mode: str = "tf", size: int = INPUT_SIZE) -> jax.Array:
  """Pixel values [B, H, W, 3] in 0..255 (uint8 or float) -> network input [B, size, size, 3].

  mode "tf": TF1 resize, then (v - 128) / 128; "pytorch": torch resize, then v / 127.5 - 1.
  """
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize={mode!r} is not one of {RESIZE_MODES}.")
  chex.assert_rank(pixels, 4)
  if pixels.shape[-1] != 3:
    raise ValueError(f"Inception needs RGB images [B, H, W, 3]; got shape {pixels.shape} "
                     "(repeat gray images to 3 channels first).")
  x = resize_bilinear(pixels.astype(jnp.float32), size, mode)
  if mode == "tf":
    return (x - 128.0) / 128.0
  return x / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------
# The network.
# ----------------------------------------------------------------------------------------------

def _pair(v) -> Tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
  """Conv (no bias) + inference batch norm (eps 1e-3) + ReLU. x [B, H, W, Cin] -> [B, H', W', Cout].

  Parameters: conv/kernel [kh, kw, Cin, Cout]; bn/scale, bn/bias, bn/mean, bn/var [Cout].
  """
  features: int
  kernel: Any = 1
  stride: int = 1
  padding: Any = 0

  @nn.compact
  def __call__(self, x):
    kh, kw = _pair(self.kernel)
    ph, pw = _pair(self.padding)
    cin = x.shape[-1]
    # Placeholder initialisers: real values come from `load_inception_params` (or, for tests,
    # `init_random_params`); `FIDInceptionV3().init` is only used for shapes.
    kernel = self.param("conv", lambda k: {
        "kernel": jnp.zeros((kh, kw, cin, self.features), jnp.float32)})["kernel"]
    bn = self.param("bn", lambda k: {
        "scale": jnp.ones((self.features,)), "bias": jnp.zeros((self.features,)),
        "mean": jnp.zeros((self.features,)), "var": jnp.ones((self.features,))})
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(self.stride, self.stride),
        padding=((ph, ph), (pw, pw)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=_HIGHEST)
    y = (y - bn["mean"]) * (bn["scale"] * jax.lax.rsqrt(bn["var"] + BN_EPS)) + bn["bias"]
    return nn.relu(y)


def _avg_pool_same(x):
  """3x3 stride-1 average pool, pad 1, padded zeros NOT counted (TF's AvgPool 'SAME')."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride: int = 2, pad: int = 0):
  return nn.max_pool(x, (3, 3), (stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, name="branch1x1")(x)
    b5 = BasicConv(48, name="branch5x5_1")(x)
    b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv(64, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv(64, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  spatial: bool = False   # also return branch1x1's output (TF `mixed_6/conv` for Mixed_6d: sFID)

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, name="branch1x1")(x)
    b7 = BasicConv(c7, name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, name="branch_pool")(_avg_pool_same(x))
    out = jnp.concatenate([b1, b7, bd, bp], axis=-1)
    return (out, b1) if self.spatial else out


class InceptionD(nn.Module):

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, name="branch3x3_1")(x)
    b3 = BasicConv(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
  """`max_pool=False`: the first E block (`Mixed_7b`, avg pool without padded zeros);
  `max_pool=True`: the FID graph's last E block (`Mixed_7c`, 3x3 max pool, stride 1, pad 1)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, name="branch1x1")(x)
    b3 = BasicConv(384, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv(448, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    pooled = _max_pool(x, stride=1, pad=1) if self.max_pool else _avg_pool_same(x)
    bp = BasicConv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """x [B, S, S, 3] in [-1, 1] (S = 299 for the standard protocol; >= 75 works) ->
  {"pool": [B, 2048], "logits": [B, 1008], "spatial": [B, s * s * 7]} float32 (s = 17 at 299)."""

  @nn.compact
  def __call__(self, x) -> Dict[str, jax.Array]:
    chex.assert_rank(x, 4)
    chex.assert_axis_dimension(x, 3, 3)
    x = x.astype(jnp.float32)
    x = BasicConv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool(x)
    x = BasicConv(80, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x, mixed_6_conv = InceptionC(160, spatial=True, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    fc = self.param("fc", lambda k: {"kernel": jnp.zeros((FEATURE_DIM, NUM_LOGITS)),
                                     "bias": jnp.zeros((NUM_LOGITS,))})
    logits = jnp.dot(pool, fc["kernel"], precision=_HIGHEST) + fc["bias"]
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    return {"pool": pool, "logits": logits, "spatial": spatial}


def param_shapes() -> Any:
  """The parameter pytree of `FIDInceptionV3` as `jax.ShapeDtypeStruct`s (traced, not run)."""
  return jax.eval_shape(lambda: FIDInceptionV3().init(
      jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3), jnp.float32)))["params"]


def init_random_params(seed: int = 0) -> Any:
  """Random, well-scaled parameters drawn with numpy (He-normal conv kernels, BN scale and
  variance ~ U(0.5, 1.5), BN bias and mean ~ 0.1 N(0, 1), fc ~ N(0, 1/2048)): for tests and smoke
  runs only — FIDs computed with them are NOT comparable to anything."""
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    leaf, kind = path[-1].key, path[-2].key if len(path) > 1 else ""
    shape = tuple(shape.shape)
    if kind == "conv":
      fan_in = shape[0] * shape[1] * shape[2]
      return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    if leaf in ("scale", "var"):
      return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if kind == "fc" and leaf == "kernel":
      return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[0]))
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(lambda p, s: jnp.asarray(draw(p, s)), param_shapes())


def make_feature_fn(params, *, resize: str = "tf", size: int = INPUT_SIZE):
  """jitted pixels [B, H, W, 3] in 0..255 -> {"pool": [B, 2048], "logits": [B, 1008],
  "spatial": [B, 2023]} float32.

  `params` are closed over as arguments (not constants) so that one compiled program serves every
  batch of the same shape."""
  if resize not in RESIZE_MODES:
    raise ValueError(f"resize={resize!r} is not one of {RESIZE_MODES} (--fid_resize).")
  model = FIDInceptionV3()

  @jax.jit
  def features(p, pixels):
    return model.apply({"params": p}, preprocess(pixels, resize, size))

  return lambda pixels: features(params, pixels)


# ----------------------------------------------------------------------------------------------
# Weights: PyTorch state dict <-> Flax pytree.
# ----------------------------------------------------------------------------------------------

_BN_KEYS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def params_to_state_dict(params) -> Dict[str, np.ndarray]:
  """Flax params -> {torch key: numpy array} in the layout of the standard `.pth` file."""
  out = {}
  inv_bn = {v: k for k, v in _BN_KEYS.items()}
  for path, value in traverse_util.flatten_dict(params).items():
    value = np.asarray(value, np.float32)
    *module, kind, leaf = path
    if kind == "conv":
      out[".".join(module + ["conv", "weight"])] = np.transpose(value, (3, 2, 0, 1))
    elif kind == "bn":
      out[".".join(module + ["bn", inv_bn[leaf]])] = value
    elif path[0] == "fc":
      out[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = value.T if leaf == "kernel" else value
    else:
      raise ValueError(f"unexpected parameter {'/'.join(path)}")
  return out


def state_dict_to_params(state_dict: Dict[str, Any]) -> Any:
  """{torch key: array} (the standard FID Inception state dict) -> Flax params.

  Checks that every parameter of `FIDInceptionV3` is present with the right shape and that no
  unexpected tensor is left over (`num_batches_tracked` and `AuxLogits.*` are ignored)."""
  wanted = {k: v.shape for k, v in params_to_state_dict(
      jax.tree.map(lambda s: np.zeros(s.shape, np.float32), param_shapes())).items()}
  arrays = {k: np.asarray(v, np.float32) for k, v in state_dict.items()
            if not k.endswith("num_batches_tracked") and not k.startswith("AuxLogits.")}
  missing = sorted(set(wanted) - set(arrays))
  extra = sorted(set(arrays) - set(wanted))
  if missing or extra:
    raise ValueError(
        "this is not the FID Inception-v3 state dict (pt_inception-2015-12-05): "
        f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)} in all), "
        f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''} ({len(extra)} in all).")
  for k, shape in wanted.items():
    if arrays[k].shape != shape:
      raise ValueError(f"FID Inception weight {k} has shape {arrays[k].shape}, expected {shape}.")
  params: Dict[str, Any] = {}
  for key, value in arrays.items():
    parts = key.split(".")
    if parts[0] == "fc":
      node = params.setdefault("fc", {})
      if parts[1] == "weight":
        node["kernel"] = value.T
      else:
        node["bias"] = value
      continue
    *module, kind, leaf = parts
    node = params
    for m in module:
      node = node.setdefault(m, {})
    if kind == "conv":
      node.setdefault("conv", {})["kernel"] = np.transpose(value, (2, 3, 1, 0))
    else:
      node.setdefault("bn", {})[_BN_KEYS[leaf]] = value
  return jax.tree.map(jnp.asarray, params)


def missing_weights_message(path: Optional[str]) -> str:
  where = path or default_weights_path()
  return (
      f"FID Inception weights not found at {where}. They are never downloaded at run time: fetch "
      f"{WEIGHTS_FILENAME} once (pytorch-fid's release asset, {WEIGHTS_URL}; torch-fidelity's "
      f"weights-inception-2015-12-05-6726825d.pth has the same keys and hash prefix), then put it at "
      f"{default_weights_path()} or pass --inception=/path/to/{WEIGHTS_FILENAME} "
      "(.pth, .safetensors, or .npz with the same keys).")


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def load_inception_params(path: Optional[str] = None) -> Any:
  """Loads the FID Inception weights from `path` (default `default_weights_path()`).

  `.pth`/`.pt`: `torch.load(..., weights_only=True)` (needs torch); `.safetensors`;
  `.npz` (allow_pickle=False) with the torch key names. Raises ValueError naming the flag and the
  place to put the file when it does not exist."""
  path = os.path.expanduser(path) if path else default_weights_path()
  if not os.path.isfile(path):
    raise ValueError(missing_weights_message(path))
  ext = os.path.splitext(path)[1].lower()
  if ext in (".pth", ".pt", ".bin"):
    sd = storage.read_torch_file(path, "--inception")
    if not isinstance(sd, dict):
      raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__}).")
    sd = {k: v.detach().cpu().float().numpy() for k, v in sd.items()}
  elif ext == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      sd = load_file(path)
    except Exception as e:  # pylint: disable=broad-except  # a torn or foreign file (SafetensorError, OSError)
      raise ValueError(f"--inception={path}: not a readable .safetensors file ({type(e).__name__}: "
                       f"{str(e)[:200]})") from None
  elif ext == ".npz":
    with storage.open_npz(path) as z:
      sd = {k: z[k] for k in z.files}
  else:
    raise ValueError(f"--inception={path}: unknown weights format {ext!r}; use .pth, "
                     ".safetensors or .npz.")
  return state_dict_to_params(sd)
