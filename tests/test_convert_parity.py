"""PyTorch DiT -> adaflow conversion: numerical parity, round trips and error reporting.

The original facebookresearch/DiT model is not shipped by any package, so `RefDiT` below restates
its forward pass (timm-style attention/MLP, adaLN-Zero, sin-cos positions, label table with a null
row, unpatchify) in plain PyTorch with the same state-dict key names. diffusers'
`DiTTransformer2DModel` is used as installed.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from adaflow.convert import adaflow_to_torch, convert_file, load_state_dict, torch_to_adaflow  # noqa: E402
from adaflow.models.dit import DiT  # noqa: E402

IMG, C, P, D, DEPTH, HEADS, K = 8, 3, 2, 32, 2, 2, 10


# ------------------------------------------------------------------------------------------------
# a faithful restatement of facebookresearch/DiT models.py (forward only)


def ref_pos_embed(dim, grid):
  """2D sin-cos table [grid*grid, dim]: first half encodes the column, second half the row."""
  def one_d(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)
  gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
  return np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)


def ref_modulate(x, shift, scale):
  return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class RefTimestep(nn.Module):
  def __init__(self, d, freq=256):
    super().__init__()
    self.freq = freq
    self.mlp = nn.Sequential(nn.Linear(freq, d), nn.SiLU(), nn.Linear(d, d))

  def forward(self, t):
    half = self.freq // 2
    freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class RefLabel(nn.Module):
  def __init__(self, k, d):
    super().__init__()
    self.k = k
    self.embedding_table = nn.Embedding(k + 1, d)

  def forward(self, y, force_drop):
    y = torch.where(force_drop, torch.full_like(y, self.k), y)
    return self.embedding_table(y)


class RefAttention(nn.Module):
  def __init__(self, d, heads):
    super().__init__()
    self.heads = heads
    self.qkv = nn.Linear(d, 3 * d)
    self.proj = nn.Linear(d, d)

  def forward(self, x):
    b, n, d = x.shape
    hd = d // self.heads
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class RefMlp(nn.Module):
  def __init__(self, d, hidden):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

  def forward(self, x):
    return self.fc2(nn.functional.gelu(self.fc1(x), approximate="tanh"))


class RefBlock(nn.Module):
  def __init__(self, d, heads):
    super().__init__()
    self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
    self.attn = RefAttention(d, heads)
    self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
    self.mlp = RefMlp(d, 4 * d)
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

  def forward(self, x, c):
    sa, ca, ga, sm, cm, gm = self.adaLN_modulation(c).chunk(6, dim=1)
    x = x + ga.unsqueeze(1) * self.attn(ref_modulate(self.norm1(x), sa, ca))
    return x + gm.unsqueeze(1) * self.mlp(ref_modulate(self.norm2(x), sm, cm))


class RefFinal(nn.Module):
  def __init__(self, d, p, out_c):
    super().__init__()
    self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
    self.linear = nn.Linear(d, p * p * out_c)
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

  def forward(self, x, c):
    shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
    return self.linear(ref_modulate(self.norm_final(x), shift, scale))


class PatchEmbed(nn.Module):
  def __init__(self, p, c, d):
    super().__init__()
    self.proj = nn.Conv2d(c, d, kernel_size=p, stride=p)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class RefDiT(nn.Module):
  """Original DiT (NCHW in, NCHW out with 2C channels when learn_sigma)."""

  def __init__(self, img=IMG, c=C, p=P, d=D, depth=DEPTH, heads=HEADS, k=K, learn_sigma=True):
    super().__init__()
    self.p, self.out_c = p, c * (2 if learn_sigma else 1)
    self.x_embedder = PatchEmbed(p, c, d)
    self.t_embedder = RefTimestep(d)
    self.y_embedder = RefLabel(k, d)
    grid = img // p
    self.pos_embed = nn.Parameter(torch.from_numpy(ref_pos_embed(d, grid)).float()[None], requires_grad=False)
    self.blocks = nn.ModuleList([RefBlock(d, heads) for _ in range(depth)])
    self.final_layer = RefFinal(d, p, self.out_c)

  def forward(self, x, t, y, force_drop):
    x = self.x_embedder(x) + self.pos_embed
    c = self.t_embedder(t) + self.y_embedder(y, force_drop)
    for blk in self.blocks:
      x = blk(x, c)
    x = self.final_layer(x, c)
    n, npatch, _ = x.shape
    h = int(npatch ** 0.5)
    x = x.reshape(n, h, h, self.p, self.p, self.out_c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, self.out_c, h * self.p, h * self.p)


# ------------------------------------------------------------------------------------------------
# helpers


def randomize(module, seed, std=0.1):
  """Random values for every parameter (DiT zero-initialises adaLN and the head; we must not)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name == "pos_embed":
        continue
      p.copy_(torch.randn(p.shape, generator=g) * std)
  return module


def make_diffusers(learn_sigma=True, tie=True, seed=0, norm_eps=1e-6, depth=DEPTH, img=IMG, c=C, p=P, k=K):
  from diffusers import DiTTransformer2DModel
  m = DiTTransformer2DModel(num_attention_heads=HEADS, attention_head_dim=D // HEADS, in_channels=c,
                            out_channels=c * (2 if learn_sigma else 1), num_layers=depth, sample_size=img,
                            patch_size=p, num_embeds_ada_norm=k, norm_eps=norm_eps)
  randomize(m, seed).eval()
  if tie:   # adaflow has ONE conditioning embedder; official checkpoints hold identical copies
    with torch.no_grad():
      for blk in m.transformer_blocks[1:]:
        blk.norm1.emb.load_state_dict(m.transformer_blocks[0].norm1.emb.state_dict())
  return m


def adaflow_model(learn_sigma=True, freq_shift=0.0, depth=DEPTH, img=IMG, c=C, k=K):
  return DiT(image_size=(img, img), in_channels=c, patch_size=P, hidden_size=D, depth=depth, num_heads=HEADS,
             num_classes=k, learn_sigma=learn_sigma, time_freq_shift=freq_shift, dtype=jnp.float32)


def state_dict_np(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def inputs(seed=0, b=4, c=C, img=IMG):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((b, img, img, c)).astype(np.float32)          # NHWC
  t = (rng.integers(0, 1024, size=b) / 1024.0).astype(np.float32)     # exact after * 1000
  y = rng.integers(0, K, size=b).astype(np.int32)
  return x, t, y


# ------------------------------------------------------------------------------------------------
# parity


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_original_dit_layout_parity(learn_sigma):
  ref = randomize(RefDiT(learn_sigma=learn_sigma), seed=1).eval()
  model = adaflow_model(learn_sigma=learn_sigma, freq_shift=0.0)
  params = torch_to_adaflow(state_dict_np(ref), "dit", model)
  x, t, y = inputs()
  fwd = jax.jit(lambda p, x, t, y: model.apply(p, x, t, y))
  for dropped in (np.zeros(len(y), bool), np.array([True, False, True, True])):
    with torch.no_grad():
      want = ref(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t * 1000.0),
                 torch.from_numpy(y).long(), torch.from_numpy(dropped))
    want = want.permute(0, 2, 3, 1).numpy()[..., :C]          # NHWC, learned-sigma channels ignored
    y_in = np.where(dropped, K, y).astype(np.int32)           # adaflow: null class = row K
    got = np.asarray(fwd(params, x, t, y_in))
    assert got.shape == (4, IMG, IMG, C)
    err = float(np.max(np.abs(got - want)))
    assert err < 1e-4, (dropped, err)
    assert float(np.std(want)) > 0.1      # the comparison is not between near-zero outputs


@pytest.mark.parametrize("learn_sigma,norm_eps", [(True, 1e-6), (False, 1e-5)])
def test_diffusers_parity(learn_sigma, norm_eps):
  """norm_eps=1e-5 is diffusers' default for the pre-MLP LayerNorm (adaflow and DiT use 1e-6):
  the difference stays far below the tolerance for activations of unit scale."""
  m = make_diffusers(learn_sigma=learn_sigma, seed=2, norm_eps=norm_eps)
  model = adaflow_model(learn_sigma=learn_sigma, freq_shift=1.0)
  params = torch_to_adaflow(state_dict_np(m), "diffusers", model)
  x, t, y = inputs(1)
  fwd = jax.jit(lambda p, x, t, y: model.apply(p, x, t, y))
  for labels in (y, np.full_like(y, K)):                    # real classes; all null (CFG branch)
    with torch.no_grad():
      want = m(torch.from_numpy(x).permute(0, 3, 1, 2), timestep=torch.from_numpy(t * 1000.0),
               class_labels=torch.from_numpy(labels).long()).sample
    want = want.permute(0, 2, 3, 1).numpy()[..., :C]
    got = np.asarray(fwd(params, x, t, labels))
    err = float(np.max(np.abs(got - want)))
    assert err < 1e-4, (labels, err)
    assert float(np.std(want)) > 0.1


def test_parity_fails_when_mapping_is_wrong():
  """The parity check has teeth: swapping q and k in the converted qkv breaks it."""
  ref = randomize(RefDiT(), seed=3).eval()
  model = adaflow_model()
  params = torch_to_adaflow(state_dict_np(ref), "dit", model)
  kern = params["params"]["block_0"]["attn"]["qkv"]["kernel"]
  params["params"]["block_0"]["attn"]["qkv"]["kernel"] = np.concatenate(
      [kern[:, D:2 * D], kern[:, :D], kern[:, 2 * D:]], axis=1)
  x, t, y = inputs()
  with torch.no_grad():
    want = ref(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t * 1000.0), torch.from_numpy(y).long(),
               torch.zeros(len(y), dtype=torch.bool)).permute(0, 2, 3, 1).numpy()[..., :C]
  got = np.asarray(jax.jit(model.apply)(params, x, t, y))
  assert float(np.max(np.abs(got - want))) > 1e-3


# ------------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("layout", ["dit", "diffusers"])
def test_round_trip_random_weights(layout):
  model = adaflow_model(freq_shift=0.0 if layout == "dit" else 1.0)
  sd = state_dict_np(randomize(RefDiT(), 4) if layout == "dit" else make_diffusers(seed=4))
  back = adaflow_to_torch(torch_to_adaflow(sd, layout, model), layout, model)
  assert sorted(back) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  # and adaflow -> torch -> adaflow from adaflow's own (random) init
  x, t, y = inputs()
  params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(5), jnp.asarray(x), jnp.asarray(t),
                                                         jnp.asarray(y)))
  import flax.linen as fnn
  params = fnn.meta.unbox(params)
  again = torch_to_adaflow(adaflow_to_torch(params, layout, model), layout, model)
  jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)
  # the exported state dict loads into the torch model strictly
  target = RefDiT() if layout == "dit" else make_diffusers(seed=0)
  target.load_state_dict({k: torch.from_numpy(v) for k, v in adaflow_to_torch(params, layout, model).items()},
                         strict=True)


# ------------------------------------------------------------------------------------------------
# errors


def test_errors_list_missing_extra_and_shape_mismatch():
  model = adaflow_model()
  sd = state_dict_np(randomize(RefDiT(), 6))
  del sd["blocks.1.mlp.fc2.bias"]
  sd["blocks.0.attn.extra_scale"] = np.ones(3, np.float32)
  sd["blocks.0.attn.proj.weight"] = np.zeros((D, D + 1), np.float32)
  with pytest.raises(ValueError) as e:
    torch_to_adaflow(sd, "dit", model)
  msg = str(e.value)
  assert "3 problem(s)" in msg
  assert "missing key blocks.1.mlp.fc2.bias" in msg
  assert "unexpected key blocks.0.attn.extra_scale" in msg
  assert "shape mismatch for blocks.0.attn.proj.weight" in msg


def test_errors_config_disagreements():
  sd = state_dict_np(randomize(RefDiT(learn_sigma=True), 7))
  # depth 3 model vs depth 2 checkpoint, no learned sigma, wrong frequency convention
  model = adaflow_model(learn_sigma=False, depth=3, freq_shift=1.0)
  with pytest.raises(ValueError) as e:
    torch_to_adaflow(sd, "dit", model)
  msg = str(e.value)
  assert "depth is 2 in the checkpoint but 3 from config.model.depth" in msg
  assert "set model.learn_sigma=True" in msg
  assert "time_freq_shift" in msg
  assert "missing key blocks.2.attn.qkv.weight" in msg
  # class count and image size
  model = adaflow_model(k=7, img=16)
  with pytest.raises(ValueError) as e:
    torch_to_adaflow(sd, "dit", model)
  assert "num_classes is 10 in the checkpoint but 7" in str(e.value)
  assert "num_tokens is 16 in the checkpoint but 64" in str(e.value)


def test_errors_untied_diffusers_embedders_are_listed():
  m = make_diffusers(tie=False, seed=8)
  with pytest.raises(ValueError) as e:
    torch_to_adaflow(state_dict_np(m), "diffusers", adaflow_model(freq_shift=1.0))
  msg = str(e.value)
  assert "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.weight" in msg
  assert "transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight" in msg


def test_wrong_layout_is_rejected_without_crash():
  sd = state_dict_np(make_diffusers(seed=9))
  with pytest.raises(ValueError, match="missing key x_embedder.proj.weight"):
    torch_to_adaflow(sd, "dit", adaflow_model())


# ------------------------------------------------------------------------------------------------
# files and the orbax checkpoint


def _digits_config(tiny, learn_sigma, freq_shift):
  return tiny(**{"model.learn_sigma": learn_sigma, "model.time_freq_shift": freq_shift})


def test_convert_file_writes_checkpoint_that_restores(tmp_path, tiny):
  """digits (16x16x1, 10 classes), tiny config (patch 4, width 32, depth 2, 2 heads): a .pt in the
  dit layout and a .safetensors in the diffusers layout both become restorable workdirs."""
  from safetensors.torch import save_file
  from adaflow.train.loop import load_trainer_and_params
  ref = randomize(RefDiT(img=16, c=1, p=4, d=32, depth=2, heads=2, k=10, learn_sigma=True), 10).eval()
  pt = tmp_path / "dit.pt"
  torch.save({"ema": ref.state_dict()}, pt)   # training-checkpoint style: the EMA weights are used
  cfg = _digits_config(tiny, True, 0.0)
  with pytest.raises(ValueError, match=r"^--out .*dit.pt/out is not writable"):   # a file as its folder
    convert_file(str(pt), "dit", cfg, str(pt / "out"), log=lambda s: None)
  params = convert_file(str(pt), "dit", cfg, str(tmp_path / "out_dit"), log=lambda s: None)
  tr, restored, step = load_trainer_and_params(str(tmp_path / "out_dit"))
  assert step == 0
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(restored), params)
  x = np.random.default_rng(0).standard_normal((2, 16, 16, 1)).astype(np.float32)
  t, y = np.array([0.5, 0.25], np.float32), np.array([3, 10], np.int32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t * 1000), torch.from_numpy(y).long(),
               torch.zeros(2, dtype=torch.bool)).permute(0, 2, 3, 1).numpy()[..., :1]
  got = np.asarray(tr.objective.apply(restored, jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)))
  assert float(np.max(np.abs(got - want))) < 1e-4

  m = make_diffusers(img=16, c=1, p=4, learn_sigma=False, seed=11)
  st = tmp_path / "dit.safetensors"
  save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(st))
  assert set(load_state_dict(str(st))) == set(m.state_dict())
  convert_file(str(st), "diffusers", _digits_config(tiny, False, 1.0), str(tmp_path / "out_diff"), log=lambda s: None)
  with pytest.raises(ValueError, match="already holds checkpoints"):
    convert_file(str(st), "diffusers", _digits_config(tiny, False, 1.0), str(tmp_path / "out_diff"),
                 log=lambda s: None)


def test_unsafe_pickle_is_refused(tmp_path, tiny):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))
  path = tmp_path / "evil.pt"
  torch.save({"x": Evil()}, path)
  with pytest.raises(ValueError, match="weights_only=True") as refused:
    load_state_dict(str(path))
  # The cause (the blocked os.system global), not torch's advice to load with weights_only=False.
  assert "system" in str(refused.value) and "weights_only=False" not in str(refused.value), refused.value
  torn = tmp_path / "torn.safetensors"       # a torn or foreign file: one line naming it, no traceback
  torn.write_bytes(b"garbage" * 20)
  with pytest.raises(ValueError, match="torn.safetensors: not a readable .safetensors file"):
    load_state_dict(str(torn))


@pytest.mark.slow
def test_cli_convert_then_sample(tmp_path):
  ref = randomize(RefDiT(img=16, c=1, p=4, d=32, depth=2, heads=2, k=10, learn_sigma=True), 12)
  pt = tmp_path / "dit.pt"
  torch.save(ref.state_dict(), pt)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cfg = os.path.join(root, "configs", "quickstart.py")
  over = ["--config.model.hidden_size=32", "--config.model.depth=2", "--config.model.num_heads=2",
          "--config.model.learn_sigma=True", "--config.sample.steps=2", "--config.model.dtype=float32"]
  out = tmp_path / "run"
  cmd = [sys.executable, "-m", "adaflow.cli", "convert", f"--from={pt}", "--format=dit", f"--config={cfg}",
         f"--out={out}"] + over
  r = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
  assert r.returncode == 0, r.stderr[-3000:]
  png = tmp_path / "grid.png"
  r = subprocess.run([sys.executable, "-m", "adaflow.cli", "sample", f"--workdir={out}", f"--config={cfg}",
                      "--num=10", f"--out={png}"] + over, capture_output=True, text=True, cwd=root)
  assert r.returncode == 0, r.stderr[-3000:]
  assert png.exists()
  bad = [sys.executable, "-m", "adaflow.cli", "convert", f"--from={pt}", "--format=dit", f"--config={cfg}",
         f"--out={tmp_path / 'bad'}"] + over[1:]   # hidden_size 128 from the quick start: mismatch
  r = subprocess.run(bad, capture_output=True, text=True, cwd=root)
  assert r.returncode != 0 and "hidden_size is 32 in the checkpoint but 128" in r.stderr
