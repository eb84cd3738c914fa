"""FID protocol: Inception parity with torch-fidelity, resize parity with torch, Frechet closed
forms, self-FID, sharded/resumed statistics, weights loading errors, and the ImageNet64 smoke run.

The parity reference is torch-fidelity 0.4.0's `FeatureExtractorInceptionV3` (the FID Inception,
TF1-exact bilinear resize). torch-fidelity's package `__init__` imports torchvision, which has no
CPU wheel on this machine's index, so the module is imported without running the package
`__init__` (`pip install --no-deps torch-fidelity==0.4.0`); the test is skipped when it is absent.
"""
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from adaflow.eval import frechet
from adaflow.eval import inception as inc
from adaflow.eval.fid import run as fid_run
from adaflow.eval.fid.features import InceptionFeatures, build_inception_features, model_to_pixels
from adaflow.eval.fid.reference import load_reference, reference_images, save_reference
from adaflow.eval.fid.scores import inception_score, precision_recall
from adaflow.eval.fid.shards import _read_npz, generate_shards, shard_features, statistics_of_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = 75  # smallest valid Inception input: the pipeline tests use it (parity uses 299)


@pytest.fixture(scope="module")
def random_params():
  return inc.init_random_params(0)


def _torch_fidelity_inception():
  if "torch_fidelity" not in sys.modules:
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None:
      pytest.skip("torch-fidelity not installed (pip install --no-deps torch-fidelity==0.4.0)")
    pkg = types.ModuleType("torch_fidelity")   # skip the package __init__ (needs torchvision)
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["torch_fidelity"] = pkg
  import torch_fidelity.feature_extractor_inceptionv3 as fe  # pylint: disable=g-import-not-at-top
  import torch_fidelity.interpolate_compat_tensorflow as itf  # pylint: disable=g-import-not-at-top
  return fe, itf


# ---------------------------------------------------------------- resize parity

@pytest.mark.parametrize("hw", [(64, 64), (16, 24), (320, 310)])
def test_pytorch_resize_matches_torch_interpolate(hw):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(0).uniform(0, 255, (2, *hw, 3)).astype(np.float32)
  want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                                         mode="bilinear", align_corners=False)
  got = inc.resize_bilinear(jnp.asarray(x), 299, "pytorch")
  # On 0..255 values: upsampling agrees to float32 rounding; torch's downsampling kernel computes
  # its source coordinates slightly differently (<= 0.004 of 255 here, 1.5e-5 relative).
  atol = 2e-3 if hw[0] < 299 else 1e-2
  np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 3, 1).numpy(), atol=atol, rtol=0)


@pytest.mark.parametrize("hw", [(64, 64), (17, 30)])
def test_tf_resize_matches_torch_fidelity(hw):
  pytest.importorskip("torch")
  import torch
  _, itf = _torch_fidelity_inception()
  x = np.random.default_rng(1).uniform(0, 255, (1, *hw, 3)).astype(np.float32)
  want = itf.interpolate_bilinear_2d_like_tensorflow1x(
      torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), align_corners=False)
  got = inc.resize_bilinear(jnp.asarray(x), 299, "tf")
  np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 3, 1).numpy(), atol=2e-3, rtol=0)
  # The two flavours really differ (so the choice is recorded with every result).
  other = inc.resize_bilinear(jnp.asarray(x), 299, "pytorch")
  assert np.abs(np.asarray(other) - np.asarray(got)).max() > 1.0


# ---------------------------------------------------------------- network parity + loader

def test_inception_parity_with_torch_fidelity(tmp_path, random_params):
  """Random weights written as the standard .pth state dict, loaded by torch-fidelity's network
  and by `load_inception_params`; same uint8 64x64 images in; pool3 and logits agree < 1e-3."""
  torch = pytest.importorskip("torch")
  fe, _ = _torch_fidelity_inception()
  path = str(tmp_path / "pt_inception-random.pth")
  torch.save({k: torch.from_numpy(v.copy()) for k, v in inc.params_to_state_dict(random_params).items()},
             path)
  ref = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits"],
                                       feature_extractor_weights_path=path)
  pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  with torch.no_grad():
    want_pool, want_logits = ref(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous())
  params = inc.load_inception_params(path)   # torch.load(weights_only=True) + conversion
  got = inc.make_feature_fn(params, resize="tf")(jnp.asarray(pixels))
  assert got["pool"].shape == (2, 2048) and got["logits"].shape == (2, 1008)
  assert float(want_pool.abs().max()) > 1.0   # a non-degenerate comparison
  np.testing.assert_allclose(np.asarray(got["pool"]), want_pool.numpy(), atol=1e-3, rtol=0)
  np.testing.assert_allclose(np.asarray(got["logits"]), want_logits.numpy(), atol=1e-3, rtol=0)


def test_weights_round_trip_npz_and_safetensors(tmp_path, random_params):
  npz = str(tmp_path / "w.npz")
  np.savez(npz, **inc.params_to_state_dict(random_params))
  from safetensors.numpy import save_file
  st = str(tmp_path / "w.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in inc.params_to_state_dict(random_params).items()}, st)
  for path in (npz, st):
    loaded = inc.load_inception_params(path)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 loaded, random_params)


def test_missing_weights_file_says_where_to_put_it(tmp_path):
  missing = str(tmp_path / "nope" / inc.WEIGHTS_FILENAME)
  with pytest.raises(ValueError) as err:
    inc.load_inception_params(missing)
  msg = str(err.value)
  assert missing in msg and "--inception" in msg and inc.default_weights_path() in msg
  assert inc.WEIGHTS_FILENAME in msg and "never downloaded" in msg
  with pytest.raises(ValueError, match="--inception"):
    build_inception_features(missing)


def test_fid_command_fails_on_missing_weights_before_restoring(tmp_path):
  from absl import flags
  from adaflow.cli import COMMANDS
  missing = str(tmp_path / inc.WEIGHTS_FILENAME)
  flags.FLAGS.unparse_flags()
  config = os.path.join(ROOT, "tests", "tiny_cli_config.py")   # given, the (missing) run's config is not read
  flags.FLAGS(["adaflow", f"--config={config}", f"--workdir={tmp_path / 'no_run'}", "--ref=dataset",
               f"--inception={missing}"])
  try:
    with pytest.raises(ValueError, match="--inception=/path/to/pt_inception"):
      COMMANDS["eval fid"]()
  finally:
    flags.FLAGS.unparse_flags()


def test_wrong_state_dict_is_rejected(tmp_path, random_params):
  sd = inc.params_to_state_dict(random_params)
  del sd["Mixed_7c.branch_pool.conv.weight"]
  sd["extra.weight"] = np.zeros(3, np.float32)
  path = str(tmp_path / "bad.npz")
  np.savez(path, **sd)
  with pytest.raises(ValueError, match="Mixed_7c.branch_pool.conv.weight.*extra.weight"):
    inc.load_inception_params(path)
  np.savez(path, **{**sd, "fc.weight": np.array([object()], dtype=object)})   # never unpickled
  with pytest.raises(ValueError, match="cannot read array 'fc.weight'"):
    inc.load_inception_params(path)
  torn = tmp_path / "torn.safetensors"
  torn.write_bytes(b"garbage" * 20)
  with pytest.raises(ValueError, match="--inception=.*torn.safetensors: not a readable"):
    inc.load_inception_params(str(torn))
  torch = pytest.importorskip("torch")

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))
  evil = tmp_path / "evil.pth"
  torch.save({"x": Evil()}, evil)
  with pytest.raises(ValueError, match=r"--inception=.*evil.pth: could not be read with torch.load\(weights_only=True\)"):
    inc.load_inception_params(str(evil))                                   # refused, not run: one line
  sd = inc.params_to_state_dict(random_params)
  sd["fc.weight"] = sd["fc.weight"][:1000]
  np.savez(path, **sd)
  with pytest.raises(ValueError, match="fc.weight has shape"):
    inc.load_inception_params(path)


# ---------------------------------------------------------------- Frechet distance (new cases)

def test_frechet_non_commuting_full_covariances():
  """tr sqrtm(S1 S2) = tr sqrtm(S1^1/2 S2 S1^1/2): closed form with symmetric square roots."""
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((5, 5)), rng.standard_normal((5, 5))
  s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
  mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
  r1 = scipy.linalg.sqrtm(s1).real
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(scipy.linalg.sqrtm(r1 @ s2 @ r1).real))
  assert not np.allclose(s1 @ s2, s2 @ s1)
  np.testing.assert_allclose(frechet.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8)
  # Symmetric in its arguments.
  np.testing.assert_allclose(frechet.frechet_distance(mu2, s2, mu1, s1), expected, rtol=1e-8)


# ---------------------------------------------------------------- pipeline

def _fake_generator(seed=0):
  """generate(i, labels) -> deterministic images [n, 32, 32, 3] in [-1, 1] (pure in (i, labels))."""
  def generate(i, labels):
    rng = np.random.default_rng([seed, i])
    base = rng.uniform(-1, 1, (len(labels), 32, 32, 3))
    return np.clip(base + 0.01 * labels[:, None, None, None], -1, 1).astype(np.float32)
  return generate


def test_self_fid_is_zero_and_shards_resume(tmp_path, random_params):
  feats = InceptionFeatures(random_params, "random-0", batch_size=4, size=SMALL)
  labels = np.arange(10, dtype=np.int32) % 3
  calls = []
  gen = _fake_generator()

  def generate(i, labels_i):
    calls.append(i)
    return gen(i, labels_i)

  out = str(tmp_path / "samples_of_run")     # a directory named like a shard: only file names are rewritten
  paths = generate_shards(generate, labels, out, shard_size=4)
  assert calls == [0, 1, 2] and len(paths) == 3
  shard_feats = shard_features(paths, feats)
  assert sorted(os.listdir(out)) == [f"{kind}_{i:05d}.npz" for kind in ("features", "samples") for i in range(3)]
  sharded = statistics_of_shards(shard_feats)
  assert sharded.count == 10

  # One-shot statistics of all images equal the merged per-shard statistics.
  images = np.concatenate([_read_npz(p)["images"] for p in paths])
  all_feats = feats(images)["pool"]
  mu, sigma = frechet.feature_statistics(all_feats)
  mu_s, sigma_s = sharded.result()
  np.testing.assert_allclose(mu_s, mu, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(sigma_s, sigma, rtol=1e-8, atol=1e-10)

  # FID of the set against itself is ~0 (relative to the FID against other images). With 10
  # images the 2048-d covariance is singular and a 2048-d sqrtm costs minutes on a busy 2-core
  # CPU, so the distance is taken on the first 6 feature dimensions here (the full-size case is
  # test_self_fid_2048_dims, marked slow).
  d = 6
  self_fid = frechet.frechet_distance(mu_s[:d], sigma_s[:d, :d], mu[:d], sigma[:d, :d])
  other = model_to_pixels(_fake_generator(seed=7)(0, labels) * 0.5)
  mu_o, sigma_o = frechet.feature_statistics(feats(other)["pool"][:, :d])
  other_fid = frechet.frechet_distance(mu_o, sigma_o, mu[:d], sigma[:d, :d])
  assert abs(self_fid) < 1e-8 * max(other_fid, 1.0) and other_fid > 1e-4

  # Resume: delete one shard (and its features) and tear another; only those are regenerated,
  # and the statistics are bit-identical.
  os.remove(paths[1])
  os.remove(os.path.join(out, "features_00001.npz"))
  with open(paths[2], "wb") as f:
    f.write(b"torn")
  calls.clear()
  paths2 = generate_shards(generate, labels, out, shard_size=4)
  assert calls == [1, 2]
  again = statistics_of_shards(shard_features(paths2, feats)).result()
  np.testing.assert_array_equal(again[0], mu_s)
  np.testing.assert_array_equal(again[1], sigma_s)


def test_reference_npz_formats(tmp_path, random_params):
  feats = InceptionFeatures(random_params, "random-0", batch_size=4, size=SMALL)
  images = model_to_pixels(_fake_generator()(0, np.zeros(6, np.int32)))
  # ADM reference-batch layout: arr_0 uint8 images (+ mu/sigma when precomputed).
  np.savez(tmp_path / "imgs.npz", arr_0=images)
  from_images = load_reference(str(tmp_path / "imgs.npz"), feats)
  acts = feats(images)["pool"]
  np.testing.assert_allclose(from_images.activations, acts, rtol=0, atol=1e-6)
  save_reference(from_images, str(tmp_path / "stats.npz"))
  from_stats = load_reference(str(tmp_path / "stats.npz"))
  np.testing.assert_array_equal(from_stats.mu, from_images.mu)
  np.savez(tmp_path / "musigma.npz", mu=from_images.mu, sigma=from_images.sigma, arr_0=images)
  ms = load_reference(str(tmp_path / "musigma.npz"))
  np.testing.assert_array_equal(ms.sigma, from_images.sigma)
  np.testing.assert_array_equal(reference_images(str(tmp_path / "musigma.npz")), images)
  np.savez(tmp_path / "bad.npz", foo=np.zeros(3))
  with pytest.raises(ValueError, match="mu\\+sigma, activations, or arr_0"):
    load_reference(str(tmp_path / "bad.npz"), feats)
  with pytest.raises(ValueError, match="--ref"):
    load_reference(str(tmp_path / "absent.npz"), feats)
  # Files from users: refused with a line naming the file, before any sample is generated.
  np.savez(tmp_path / "other_net.npz", mu=np.zeros(3), sigma=np.eye(3))      # another network's statistics
  with pytest.raises(ValueError, match="not statistics of the 2048-d Inception"):
    load_reference(str(tmp_path / "other_net.npz"))
  np.savez(tmp_path / "objects.npz", mu=np.array([object()], dtype=object), sigma=np.eye(2))
  with pytest.raises(ValueError, match="objects.npz: cannot read array 'mu'.*no Python objects"):
    load_reference(str(tmp_path / "objects.npz"))                          # never unpickled
  (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"mu": 1}))
  (tmp_path / "text.npz").write_text("not an archive " * 10)
  np.save(tmp_path / "bare.npy", np.zeros(3))
  (tmp_path / "bare.npz").write_bytes((tmp_path / "bare.npy").read_bytes())
  for name, match in (("pickle", "not a readable .npz"), ("text", "not a readable .npz"), ("bare", "one .npy array")):
    with pytest.raises(ValueError, match=match):
      load_reference(str(tmp_path / f"{name}.npz"))


def test_inception_score_and_precision_recall_closed_cases():
  # Uniform predictions -> IS 1; confident, balanced over C classes -> IS = C.
  assert abs(inception_score(np.zeros((20, 1008)))[0] - 1.0) < 1e-9
  confident = np.full((40, 1008), -1e4)
  confident[np.arange(40), np.arange(40) % 4] = 0.0
  np.testing.assert_allclose(inception_score(confident, splits=2)[0], 4.0, rtol=1e-6)
  rng = np.random.default_rng(0)
  real = rng.standard_normal((200, 8)).astype(np.float32)
  pr = precision_recall(real, real.copy(), k=3)
  assert pr == {"precision": 1.0, "recall": 1.0}
  far = precision_recall(real, real + 100.0, k=3)
  assert far == {"precision": 0.0, "recall": 0.0}
  # A fake set covering a quarter of the real support: full precision, recall well below 1.
  quarter = real[(real[:, 0] > 0) & (real[:, 1] > 0)]
  pr = precision_recall(real, quarter, k=3)
  assert pr["precision"] == 1.0 and pr["recall"] < 0.7


@pytest.mark.slow
def test_self_fid_2048_dims():
  """Full-size self-FID (3000 x 2048 features, nonsingular covariance) is ~0, and shifting the
  mean by delta gives exactly |delta|^2."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3000, 2048)) * rng.uniform(0.1, 2.0, 2048)
  mu, sigma = frechet.feature_statistics(x)
  assert abs(frechet.frechet_distance(mu, sigma, mu, sigma)) < 1e-6
  delta = np.full(2048, 0.01)
  np.testing.assert_allclose(frechet.frechet_distance(mu + delta, sigma, mu, sigma), 0.2048, rtol=1e-5)


SHARDED_SCRIPT = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import numpy as np, jax
    from jax.sharding import Mesh
    sys.path.insert(0, {root!r})
    from adaflow.eval import inception as inc, frechet
    from adaflow.eval.fid.features import InceptionFeatures
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()).reshape(8, 1, 1), ("data", "fsdp", "model"))
    params = inc.init_random_params(0)
    pix = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    sharded = InceptionFeatures(params, "r", batch_size=8, size=75, mesh=mesh)(pix)["pool"]
    single = InceptionFeatures(params, "r", batch_size=8, size=75)(pix)["pool"]
    merged = frechet.StreamingStatistics()
    for part in np.array_split(sharded, 3):
      merged.merge(frechet.StreamingStatistics().update(part))
    mu, sigma = merged.result()
    mu1, sigma1 = frechet.feature_statistics(single)
    print(json.dumps(dict(feat_err=float(np.abs(sharded - single).max()),
                          mu_err=float(np.abs(mu - mu1).max()),
                          sigma_err=float(np.abs(sigma - sigma1).max()),
                          scale=float(np.abs(single).max()))))
""")


@pytest.mark.slow
def test_sharded_features_and_stats_equal_unsharded_on_8_devices():
  out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT.format(root=ROOT)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r["scale"] > 0.1
  assert r["feat_err"] < 1e-4 * max(r["scale"], 1.0)
  assert r["mu_err"] < 1e-4 and r["sigma_err"] < 1e-4


# ---------------------------------------------------------------- the whole path

@pytest.mark.slow   # ~2 jit compiles of the toy DiT + Inception + one 2048-d sqrtm (minutes on 2 busy cores)
def test_imagenet64_smoke_run_resumes(tmp_path):
  """train (2 steps, TFDS mock imagenet_resized/64x64) -> `eval fid` (random Inception); a second
  call reuses every shard and cached feature and gives the identical FID."""
  pytest.importorskip("tensorflow_datasets")
  from experiments.imagenet64 import smoke  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "in64")
  first = smoke.run_smoke(workdir, num=8, shard=4)
  assert first["num"] == 8 and np.isfinite(first["fid"]) and first["fid"] > 0
  assert first["inception"] == "random-0" and first["resize"] == "tf" and first["step"] == 2
  run_dir = os.path.join(workdir, "fid", fid_run.run_tag(2, 8, 1234, 2, "euler", 1.0))
  shards = sorted(f for f in os.listdir(run_dir) if f.startswith("samples_"))
  assert shards == ["samples_00000.npz", "samples_00001.npz"]
  stamp = {f: os.path.getmtime(os.path.join(run_dir, f)) for f in os.listdir(run_dir) if f.endswith(".npz")}
  second = smoke.run_smoke(workdir, num=8, shard=4)
  assert second["fid"] == first["fid"]
  assert all(os.path.getmtime(os.path.join(run_dir, f)) == t for f, t in stamp.items())
  with open(os.path.join(run_dir, "result.json")) as f:
    assert json.load(f)["fid"] == first["fid"]


def test_cli_eval_fid_dispatches_to_fid(monkeypatch):
  from adaflow import cli
  from adaflow.cli import COMMANDS
  cli.FLAGS.unparse_flags()   # absl keeps flag values across parses: an earlier test's --out / --selector
  called = []
  for name in ("eval fid", "eval"):   # the table's rows, with functions that record the dispatch
    monkeypatch.setitem(COMMANDS, name, COMMANDS[name]._replace(fn=lambda name=name: called.append(name)))
  for argv in (["adaflow", "eval", "fid"], ["adaflow", "eval"]):
    with pytest.raises(SystemExit):
      cli.main(argv)
  assert called == ["eval fid", "eval"]


def test_imagenet64_recipes_validate():
  """Every recipe passes the registered config validators for ImageNet64 on a 32-chip mesh (the
  AdaDiff policy needs its generator workdir, which `--init` provides)."""
  from adaflow import methods
  from adaflow.data.pipeline import DatasetInfo
  from experiments.imagenet64 import config as recipes  # pylint: disable=g-import-not-at-top
  info = DatasetInfo((64, 64, 3), 1000, 1281167, tuple(str(i) for i in range(1000)))
  for method in recipes.METHODS:
    c = recipes.get_config(method)
    if method == "adadiff":
      with pytest.raises(ValueError, match="generator_workdir"):
        methods.validate(c, info, num_devices=32)
      c.selector.generator_workdir = "/runs/in64_dense"
    methods.validate(c, info, num_devices=1 if method.endswith("smoke") else 32)
  assert recipes.get_config("dense").data.name == "tfds:imagenet_resized/64x64"
  with pytest.raises(ValueError, match="config.py:<method>"):
    recipes.get_config("nope")


# ---------------------------------------------------------------- sFID and FID while training

def test_spatial_features_are_mixed_6_conv_first_7_channels(random_params):
  """`spatial` = Mixed_6d.branch1x1 (TF mixed_6/conv) [..., :7] flattened; 17 * 17 * 7 = 2023 at 299."""
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, SMALL, SMALL, 3)), jnp.float32)
  out, inter = inc.FIDInceptionV3().apply({"params": random_params}, x, capture_intermediates=True)
  b1 = inter["intermediates"]["Mixed_6d"]["branch1x1"]["__call__"][0]
  np.testing.assert_array_equal(out["spatial"], b1[..., :inc.SPATIAL_CHANNELS].reshape(2, -1))
  shapes = jax.eval_shape(lambda p, v: inc.FIDInceptionV3().apply({"params": p}, v), inc.param_shapes(),
                          jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32))
  assert shapes["spatial"].shape == (1, 2023)


def test_sfid_reference_round_trip_and_self_sfid_zero(tmp_path, random_params):
  feats = InceptionFeatures(random_params, "random-0", batch_size=4, size=SMALL)
  images = model_to_pixels(_fake_generator()(0, np.zeros(12, np.int32)))
  np.savez(tmp_path / "imgs.npz", arr_0=images)
  ref = load_reference(str(tmp_path / "imgs.npz"), feats)
  d = ref.mu_s.shape[0]
  assert ref.sigma_s.shape == (d, d) and d == feats(images[:1])["spatial"].shape[1]
  save_reference(ref, str(tmp_path / "stats.npz"))       # ADM's names: mu_s / sigma_s
  again = load_reference(str(tmp_path / "stats.npz"))
  np.testing.assert_array_equal(again.mu_s, ref.mu_s)
  paths = generate_shards(lambda i, lab: _fake_generator()(0, np.zeros(12, np.int32))[:len(lab)],
                          np.zeros(12, np.int32), str(tmp_path / "run"), shard_size=12)
  sf = shard_features(paths, feats)
  stats = frechet.StreamingStatistics().update(sf[0]["spatial"]).result()
  k = 6   # a 12-image covariance is singular: compare on a few dims (as test_self_fid_is_zero_...)
  assert abs(frechet.frechet_distance(stats[0][:k], stats[1][:k, :k], ref.mu_s[:k], ref.sigma_s[:k, :k])) < 1e-6


def _fid_config(**over):
  from conftest import tiny_config
  base = {"train.steps": 4, "train.ckpt_every": 2, "eval.fid_every": 2, "eval.fid_random_inception": 3,
          "eval.fid_input_size": SMALL, "eval.fid_num": 8, "eval.fid_ref": "dataset", "eval.fid_ref_num": 16,
          "eval.fid_batch": 8, "eval.fid_gen_batch": 8, "eval.fid_shard": 8}
  base.update(over)
  return tiny_config(**base)


def test_fid_while_training_is_logged_and_resumes(tmp_path, monkeypatch):
  """eval.fid_every=2 over 4 steps: FID and sFID rows at steps 2 and 4. A run killed after the
  checkpoint at 4 but before its FID row is rerun: only that row is computed (from the same
  shards, to the same number); the row and result of step 2 stay untouched."""
  from adaflow.train.loop import train
  from adaflow.train.metrics_log import read_metrics
  real = frechet.frechet_distance
  # A 2048-d sqrtm takes minutes on a busy 2-core CPU; this test is about the schedule and resume,
  # so the distance is taken on the first 6 dimensions (the full size: test_self_fid_2048_dims).
  monkeypatch.setattr(fid_run, "frechet_distance", lambda m1, s1, m2, s2: real(m1[:6], s1[:6, :6], m2[:6], s2[:6, :6]))
  w = str(tmp_path / "w")
  train(_fid_config(), w, log=lambda m: None)
  rows = read_metrics(w, "fid")
  assert [r["step"] for r in rows] == [2, 4]
  assert all(np.isfinite(r["fid"]) and np.isfinite(r["sfid"]) and r["fid"] > 0 for r in rows)
  result2 = os.path.join(w, "fid", fid_run.run_tag(2, 8, 1234, 2, "euler", 2.0), "result.json")
  stamp = os.path.getmtime(result2)
  path = os.path.join(w, "metrics.jsonl")
  lines = open(path).read().splitlines(keepends=True)
  four = [ln for ln in lines if '"kind": "fid"' in ln and '"step": 4' in ln]
  open(path, "w").write("".join(ln for ln in lines if ln not in four))
  train(_fid_config(), w, log=lambda m: None)
  again = read_metrics(w, "fid")
  assert [r["step"] for r in again] == [2, 4]
  assert again[0] == rows[0] and again[1]["fid"] == rows[1]["fid"] and again[1]["sfid"] == rows[1]["sfid"]
  assert os.path.getmtime(result2) == stamp


def test_fid_while_training_checks_its_inputs_before_training(tmp_path):
  from adaflow.train.loop import train
  w = tmp_path / "w"
  with pytest.raises(ValueError, match="eval.fid_inception: .*pt_inception"):
    train(_fid_config(**{"eval.fid_random_inception": -1, "eval.fid_inception": str(tmp_path / "none.pth")}),
          str(w), log=lambda m: None)
  with pytest.raises(ValueError, match="eval.fid_ref"):
    train(_fid_config(**{"eval.fid_ref": ""}), str(w), log=lambda m: None)
  for field, value in (("fid_shard", 0), ("fid_gen_batch", 0), ("fid_ref_num", 1)):   # used at the first FID only
    with pytest.raises(ValueError, match=f"eval.{field} must be >= "):
      train(_fid_config(**{f"eval.{field}": value}), str(w), log=lambda m: None)
  assert not (w / "checkpoints").exists()


def test_fid_while_training_accepts_a_reference_in_a_bucket(monkeypatch):
  """eval.fid_ref=gs://... is checked through storage (as `adaflow eval fid --ref` is), not as a
  local file: the hook once refused every bucket reference before training."""
  from adaflow import storage
  from adaflow.train.periodic_fid import PeriodicFID
  there = "gs://bkt/VIRTUAL_imagenet64_labeled.npz"
  monkeypatch.setattr(storage, "exists", lambda path: str(path) == there)
  hook = PeriodicFID(_fid_config(**{"eval.fid_ref": there}), "gs://bkt/run", mesh=None)
  assert hook.ref == there and hook.features is not None
  with pytest.raises(ValueError, match="eval.fid_ref='gs://bkt/missing.npz' does not exist"):
    PeriodicFID(_fid_config(**{"eval.fid_ref": "gs://bkt/missing.npz"}), "gs://bkt/run", mesh=None)


@pytest.mark.slow   # 2 processes x (DiT + Inception compiles) and one 2048-d sqrtm: minutes on 2 busy cores
def test_fid_while_training_on_two_processes(tmp_path):
  """`adaflow train` with eval.fid_every on 2 processes x 1 device: both exit 0 and process 0
  logs one FID/sFID row (the collective path of `adaflow eval fid`)."""
  from adaflow.train.metrics_log import read_metrics
  from test_multiprocess import CLI_CONFIG, run_cli
  w = tmp_path / "w"
  fid_flags = ["--config.eval.at_end=False", "--config.train.final_samples=False", "--config.eval.fid_every=4",
               "--config.eval.fid_random_inception=3", f"--config.eval.fid_input_size={SMALL}",
               "--config.eval.fid_num=8", "--config.eval.fid_ref=dataset", "--config.eval.fid_ref_num=16",
               "--config.eval.fid_batch=8", "--config.eval.fid_gen_batch=8", "--config.eval.fid_shard=8"]
  run_cli(["train", f"--config={CLI_CONFIG}", f"--workdir={w}"] + fid_flags, 2, 1, tmp_path)
  rows = read_metrics(str(w), "fid")
  assert [r["step"] for r in rows] == [4] and np.isfinite(rows[0]["fid"]) and np.isfinite(rows[0]["sfid"])
