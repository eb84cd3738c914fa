"""DQ-VAE / DQ-Transformer: sequences, gate budget, EMA codebook, causality, KV-cache sampling."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adaflow.models import dqvae as dq
from adaflow.models.vq import codebook_statistics, ema_codebook_update, quantize
from conftest import tiny_dqvae_config


def _random_codes(rng, layout, b):
  k1, k2, k3, k4 = jax.random.split(rng, 4)
  mask = jax.random.bernoulli(k1, 0.5, (b, layout.nc))
  mask = mask.at[0].set(False).at[1].set(True)   # all-coarse and all-fine rows
  cc = jax.random.randint(k2, (b, layout.nc), 0, layout.codebook_size)
  cf = jax.random.randint(k3, (b, layout.nf), 0, layout.codebook_size)
  labels = jax.random.randint(k4, (b,), 0, max(layout.num_classes, 1))
  return mask, cc, cf, labels


def test_sequence_round_trip():
  layout = dq.Layout(image_size=16, coarse_stride=4, codebook_size=16, num_classes=10)
  mask, cc, cf, labels = _random_codes(jax.random.PRNGKey(0), layout, 6)
  seq = dq.codes_to_sequence(layout, mask, cc, cf, labels)
  assert seq["content"].shape == (6, layout.seq_len)
  back = dq.sequence_to_codes(layout, seq)
  np.testing.assert_array_equal(back["fine_mask"], mask)
  np.testing.assert_array_equal(back["labels"], labels)
  coarse_used = ~np.asarray(mask)
  fine_used = np.asarray(mask)[:, layout.parent()]
  np.testing.assert_array_equal(np.where(coarse_used, back["codes_coarse"], -1), np.where(coarse_used, cc, -1))
  np.testing.assert_array_equal(np.where(fine_used, back["codes_fine"], -1), np.where(fine_used, cf, -1))
  # Lengths: class + coarse codes + EOS + fine codes + EOS.
  n_codes = coarse_used.sum(1) + fine_used.sum(1)
  np.testing.assert_array_equal(seq["length"], n_codes + 3)
  assert int(seq["length"][0]) == layout.nc + 3 and int(seq["length"][1]) == layout.nf + 3
  # The structure: [class] coarse... EOS fine... EOS pad...
  s0 = np.asarray(seq["content"][2])
  n_c = int(coarse_used[2].sum())
  assert s0[0] == layout.class_offset + int(labels[2])
  assert s0[n_c + 1] == layout.eos and s0[int(seq["length"][2]) - 1] == layout.eos
  assert np.all(s0[int(seq["length"][2]):] == layout.pad)
  pos = np.asarray(seq["position"][2])
  assert np.all(np.diff(pos[1:n_c + 1]) > 0)                                 # raster order, coarse grid
  assert np.all(np.diff(pos[n_c + 2:int(seq["length"][2]) - 1]) > 0)        # raster order, fine grid
  # sequence -> codes -> sequence is the identity.
  again = dq.codes_to_sequence(layout, back["fine_mask"], back["codes_coarse"], back["codes_fine"], back["labels"])
  for k in ("content", "position", "segment"):
    np.testing.assert_array_equal(again[k], seq[k])


def test_tokenizer_decode_inverts_encode():
  from adaflow.objectives.dqvae import build_tokenizer
  from adaflow.data import get_info
  c = tiny_dqvae_config()
  info = get_info(c.data)
  tok = build_tokenizer(c.dqvae, info)
  params = nn.meta.unbox(tok.net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1))))
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 16, 16, 1), minval=-1, maxval=1)
  y = jnp.array([0, 1, 2])
  seq = jax.jit(tok.encode)(params, x, y)
  rec_direct, mask = jax.jit(tok.reconstruct)(params, x)
  np.testing.assert_allclose(jax.jit(tok.decode)(params, seq), rec_direct, atol=1e-6)
  np.testing.assert_array_equal(dq.sequence_to_codes(tok.layout, seq)["fine_mask"], mask)


def test_gate_respects_budget_under_budget_loss_alone():
  """Only the gate MLP is trained, only on gamma (fine_fraction - r)^2: the fine fraction of the
  hard Gumbel decisions moves from ~0.5 to the target."""
  net = dq.DQVAENet(width=16, embed_dim=8, coarse_stride=4, codebook_size=8, channels=1)
  params = nn.meta.unbox(net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1))))
  fine = jax.random.normal(jax.random.PRNGKey(1), (32, 8, 8, 8))
  coarse = jax.random.normal(jax.random.PRNGKey(2), (32, 4, 4, 8))
  gate_keys = ("gate_fc1", "gate_fc2")
  gate_p = {k: params["params"][k] for k in gate_keys}
  target = 0.15

  def fraction(gp, rng):
    full = {"params": {**params["params"], **gp}}
    logits = net.apply(full, fine, coarse, method=dq.DQVAENet.gate_logits)
    return jnp.mean(dq.gumbel_hard(rng, logits)[..., 1])

  def loss(gp, rng):
    return 10.0 * jnp.square(fraction(gp, rng) - target)

  tx = optax.adam(1e-2)
  opt = tx.init(gate_p)

  @jax.jit
  def step(gp, opt, rng):
    g = jax.grad(loss)(gp, rng)
    u, opt = tx.update(g, opt, gp)
    return optax.apply_updates(gp, u), opt

  before = float(np.mean([fraction(gate_p, jax.random.PRNGKey(100 + i)) for i in range(8)]))
  for i in range(300):
    gate_p, opt = step(gate_p, opt, jax.random.PRNGKey(i))
  after = float(np.mean([fraction(gate_p, jax.random.PRNGKey(1000 + i)) for i in range(8)]))
  assert abs(before - 0.5) < 0.2
  assert abs(after - target) < 0.06, (before, after)


def test_codebook_ema_update_and_dead_code_restart():
  k, d = 4, 3
  cb = {"embed": jnp.eye(4, 3), "cluster_size": jnp.array([5.0, 5.0, 5.0, 0.01]),
        "embed_sum": 5.0 * jnp.eye(4, 3)}
  z = jnp.array([[1.0, 0.0, 0.0], [1.2, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 9.0]])
  idx, q = quantize(z, cb["embed"])
  np.testing.assert_array_equal(idx, [0, 0, 1, 2])
  w = jnp.array([1.0, 1.0, 1.0, 0.0])                     # the last vector is unused
  counts, sums = codebook_statistics(z, idx, w, k)
  np.testing.assert_allclose(counts, [2, 1, 0, 0])
  np.testing.assert_allclose(sums[0], [2.2, 0, 0], rtol=1e-6)
  cand = jnp.full((k, d), 7.0)
  new = ema_codebook_update(cb, counts, sums, cand, decay=0.9, restart_threshold=0.1)
  cs = 0.9 * np.array([5.0, 5.0, 5.0, 0.01]) + 0.1 * np.array([2, 1, 0, 0])
  np.testing.assert_allclose(new["cluster_size"][:3], cs[:3], rtol=1e-6)
  es0 = 0.9 * 5.0 * np.eye(4, 3)[0] + 0.1 * np.array([2.2, 0, 0])
  n = cs.sum()
  smoothed0 = (cs[0] + 1e-5) / (n + 4e-5) * n
  np.testing.assert_allclose(new["embed"][0], es0 / smoothed0, rtol=1e-5)
  # Code 3 was dead (EMA size 0.009 < 0.1): restarted at the candidate with size 1.
  np.testing.assert_allclose(new["embed"][3], 7.0)
  np.testing.assert_allclose(new["cluster_size"][3], 1.0)
  np.testing.assert_allclose(new["embed_sum"][3], 7.0)


@pytest.mark.slow
def test_dqvae_train_step_updates_codebook_by_ema_only():
  """Through the shared train step: the codebook moves only by after_update (no gradient), all
  codes start dead and restart from encoder vectors, and the loss is finite."""
  from adaflow.data import get_info
  from adaflow.methods import build_objective
  from adaflow.train.optim import make_optimizer
  from adaflow.train.state import create_state
  from adaflow.train.step import make_train_step
  c = tiny_dqvae_config()
  info = get_info(c.data)
  obj = build_objective(c, info)
  params = nn.meta.unbox(obj.init(jax.random.PRNGKey(0)))
  tx = make_optimizer(c.train)
  state = create_state(params, tx, jax.random.PRNGKey(1))
  x = jax.random.uniform(jax.random.PRNGKey(2), (8, 16, 16, 1), minval=-1, maxval=1)
  batch = {"image": x, "label": jnp.zeros((8,), jnp.int32)}
  (_, (metrics, _)), grads = jax.jit(jax.value_and_grad(obj.loss, has_aux=True))(params, batch, jax.random.PRNGKey(3))
  assert float(jnp.abs(grads["params"]["codebook_embed"]).max()) == 0.0
  assert float(jnp.abs(grads["params"]["gate_fc2"]["kernel"]).max()) > 0.0     # gate learns (ST path)
  new_state, m = jax.jit(make_train_step(obj, tx, 0.0))(state, batch)
  assert np.isfinite(float(m["loss"]))
  new_cb = dq.codebook_of(new_state.params)
  _, (_, side) = obj.loss(params, batch, jax.random.fold_in(state.rng, 0))   # the step's own statistics
  counts, sums = np.asarray(side["counts"]), np.asarray(side["sums"])
  # Every code was dead at init (cluster size 0). Codes that got fewer than threshold/(1-decay)
  # assignments stay dead and restart at an encoder vector of the batch with size 1; the others
  # move to the mean of their assigned vectors.
  restarted = counts * (1 - c.dqvae.ema_decay) < c.dqvae.restart_threshold
  assert restarted.any() and (~restarted).any()
  np.testing.assert_allclose(np.asarray(new_cb["cluster_size"])[restarted], 1.0)
  fine, coarse = obj.net.apply(params, x, method=dq.DQVAENet.features)
  pool = np.concatenate([np.asarray(coarse).reshape(-1, 8), np.asarray(fine).reshape(-1, 8)])
  emb = np.asarray(new_cb["embed"])
  dist = np.min(np.sum((emb[restarted][:, None] - pool[None]) ** 2, -1), axis=1)
  assert dist.max() < 1e-8
  live = ~restarted
  np.testing.assert_allclose(emb[live], sums[live] / counts[live][:, None], rtol=1e-3, atol=1e-4)


def test_gate_calibration_sets_encoding_fraction_and_both_estimator():
  """after_update moves params['gate_threshold'] to the batch's (1 - r) quantile of the gate margin,
  so deterministic encoding codes a fraction r of the regions fine (the raw argmax need not);
  gate_gradient='both' has the same loss value as the paper's 'max' estimator but its own gate
  gradient."""
  from adaflow.data import get_info
  from adaflow.methods import build_objective
  c = tiny_dqvae_config(fine_fraction=0.25, gate_calibration_decay=0.5)
  info = get_info(c.data)
  obj = build_objective(c, info)
  params = nn.meta.unbox(obj.init(jax.random.PRNGKey(0)))
  # Push the gate towards fine everywhere: the raw argmax then codes (almost) every region fine.
  params["params"]["gate_fc2"]["bias"] = jnp.array([0.0, 3.0])
  x = jax.random.uniform(jax.random.PRNGKey(2), (16, 16, 16, 1), minval=-1, maxval=1)
  batch = {"image": x, "label": jnp.zeros((16,), jnp.int32)}
  encode_codes = jax.jit(obj.tokenizer.encode_codes)
  raw = float(jnp.mean(encode_codes(params, x)["fine_mask"]))
  assert raw > 0.9
  loss, after_update = jax.jit(obj.loss), jax.jit(obj.after_update)
  for i in range(30):
    _, (_, side) = loss(params, batch, jax.random.PRNGKey(i))
    params = after_update(params, side)
  assert float(params["params"]["gate_threshold"]) > 0.5
  calibrated = float(jnp.mean(encode_codes(params, x)["fine_mask"]))
  assert abs(calibrated - 0.25) < 0.02, calibrated
  # Estimators: equal loss value, different (non-zero) gate gradients.
  c_both = tiny_dqvae_config(fine_fraction=0.25, gate_gradient="both")
  obj_both = build_objective(c_both, info)
  (l_max, _), g_max = jax.jit(jax.value_and_grad(obj.loss, has_aux=True))(params, batch, jax.random.PRNGKey(5))
  (l_both, _), g_both = jax.jit(jax.value_and_grad(obj_both.loss, has_aux=True))(params, batch, jax.random.PRNGKey(5))
  np.testing.assert_allclose(float(l_max), float(l_both), rtol=1e-5)
  gm, gb = g_max["params"]["gate_fc2"]["kernel"], g_both["params"]["gate_fc2"]["kernel"]
  assert float(jnp.abs(gb).max()) > 0 and float(jnp.abs(gm - gb).max()) > 1e-3 * float(jnp.abs(gb).max())
  assert float(jnp.abs(g_both["params"]["gate_threshold"])) == 0.0
  c_bad = tiny_dqvae_config(gate_gradient="sometimes")
  from adaflow import methods
  with pytest.raises(ValueError, match="dqvae.gate_gradient"):
    methods.validate(c_bad, info)


def test_dqvae_config_errors():
  from adaflow import methods
  from adaflow.data import get_info
  c = tiny_dqvae_config(coarse_stride=6)
  with pytest.raises(ValueError, match="dqvae.coarse_stride"):
    methods.validate(c, get_info(c.data))
  c = tiny_dqvae_config(router="random")
  with pytest.raises(ValueError, match="dqvae.router"):
    methods.validate(c, get_info(c.data))
  c = tiny_dqvae_config(perceptual_weight=0.1)
  methods.validate(c, get_info(c.data))                # perceptual_seed 1, eval.classifier_seed 0
  c.dqvae.perceptual_seed = c.eval.classifier_seed
  with pytest.raises(ValueError, match="dqvae.perceptual_seed.*eval.classifier_seed"):
    methods.validate(c, get_info(c.data))
  # These reached compilation: negative loss weights trained on, an empty reconstruction bank failed
  # in generate() after training, no entropy bins or threshold images failed in the router.
  for field, value in (("l1_weight", -1.0), ("commitment", -0.25), ("restart_threshold", -0.1),
                       ("recon_bank_per_class", 0), ("entropy_bins", 1), ("entropy_num_images", 0), ("disc_width", 0)):
    with pytest.raises(ValueError, match=rf"config\.dqvae\.{field}: must be"):
      methods.validate(tiny_dqvae_config(**{field: value}), get_info(c.data))


def test_dq_transformer_config_errors():
  """Checked before the tokenizer is loaded or anything compiles; num_heads 0 was a ZeroDivisionError."""
  from adaflow.objectives.dq_transformer import DQTransformerObjective
  c = tiny_dqvae_config()
  c.objective, c.tokenizer_workdir = "dq_transformer", "/some/dqvae/run"
  DQTransformerObjective.validate(c, None)
  for field, value in (("num_heads", 0), ("mlp_ratio", 0.0), ("position_weight", -0.5), ("width", 0),
                       ("temperature", 0.0), ("top_k", -1), ("dtype", "fp16")):
    bad = c.copy_and_resolve_references()
    bad.dq_transformer[field] = value
    with pytest.raises(ValueError, match=rf"config\.dq_transformer\.{field}: "):
      DQTransformerObjective.validate(bad, None)


@pytest.mark.parametrize("flags,want", [({"avx2", "avx512_bf16"}, "bfloat16"), ({"avx2"}, "float32")])
def test_dq_transformer_auto_dtype_follows_the_cpu_as_the_dit_does(monkeypatch, flags, want):
  """`dq_transformer.dtype="auto"` (the default) computes in bf16 only where matmuls are native bf16:
  on AVX2-only CPUs bf16 GEMMs are emulated and slower than float32 (issue #28), as for `model.dtype`."""
  from adaflow.data import get_info
  from adaflow.objectives.dq_transformer import DQTransformerObjective
  from adaflow.objectives.dqvae import build_tokenizer
  from adaflow.parallel import precision
  monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
  c = tiny_dqvae_config()
  info = get_info(c.data)
  tokenizer = build_tokenizer(c.dqvae, info)
  c.objective = "dq_transformer"
  assert c.dq_transformer.dtype == "auto"
  objective = DQTransformerObjective(c, info, (tokenizer, {}))
  assert objective.model.dtype == jnp.dtype(want)
  assert objective.describe_compute().startswith(f"compute dtype {want} (auto: cpu")
  c.dq_transformer.dtype = "float32"                # an explicit value wins everywhere
  assert DQTransformerObjective(c, info, (tokenizer, {})).model.dtype == jnp.float32


def test_entropy_router_and_fixed_map():
  x = jnp.concatenate([jnp.zeros((1, 8, 8, 1)), jax.random.uniform(jax.random.PRNGKey(0), (1, 8, 8, 1), minval=-1,
                                                                      maxval=1)], axis=2)   # [1, 8, 16, 1]
  x = jnp.concatenate([x, x], axis=1)                                        # 16 x 16: left flat, right noisy
  e = dq.region_entropy(x, 8)
  assert e.shape == (1, 2, 2)
  assert float(e[0, 0, 0]) == 0.0 and float(e[0, 0, 1]) > 1.0
  m = dq.fixed_fine_map(16, 0.25)
  assert m.sum() == 4


# ---- DQ-Transformer ----------------------------------------------------------------------------

def _tiny_transformer():
  from adaflow.models.dq_transformer import DQTransformer
  layout = dq.Layout(image_size=16, coarse_stride=8, codebook_size=8, num_classes=3)   # Nc 4, Nf 16, L 19
  model = DQTransformer(layout, width=32, depth_pos=1, depth_content=1, heads=2, dtype=jnp.float32)
  z = jnp.zeros((1, layout.seq_len), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), z, z, z))
  # Non-trivial position / content heads so that sampling is not uniform.
  params = jax.tree_util.tree_map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(9), p.shape), params)
  return layout, model, params


def test_transformer_is_causal():
  """Changing token j never changes the logits of rows < j (row i predicts token i+1 and may see
  token i+1's position only through the content stack's target embedding, row i itself)."""
  layout, model, params = _tiny_transformer()
  mask, cc, cf, labels = _random_codes(jax.random.PRNGKey(1), layout, 4)
  seq = dq.codes_to_sequence(layout, mask, cc, cf, labels)
  apply = jax.jit(model.apply)
  pl, cl = apply(params, seq["content"], seq["position"], seq["segment"])
  for j in (3, 7, 12):
    c2 = seq["content"].at[:, j].set((seq["content"][:, j] + 1) % layout.codebook_size)
    p2 = seq["position"].at[:, j].set((seq["position"][:, j] + 1) % layout.nf)
    pl2, cl2 = apply(params, c2, p2, seq["segment"])
    np.testing.assert_allclose(pl2[:, :j], pl[:, :j], atol=1e-5)
    np.testing.assert_allclose(cl2[:, :j - 1], cl[:, :j - 1], atol=1e-5)
    assert float(jnp.abs(pl2[:, j:] - pl[:, j:]).max()) > 1e-4        # later rows do see it


def test_kv_cache_sampling_equals_uncached_and_is_valid():
  from adaflow.models.dq_transformer import sample_sequences
  layout, model, params = _tiny_transformer()
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  fn = jax.jit(sample_sequences, static_argnums=(0,), static_argnames=("top_k", "temperature", "cached"))
  a = fn(model, params, jax.random.PRNGKey(3), labels, top_k=5, temperature=1.0, cached=True)
  b = fn(model, params, jax.random.PRNGKey(3), labels, top_k=5, temperature=1.0, cached=False)
  for k in ("content", "position", "segment"):
    np.testing.assert_array_equal(a[k], b[k])
  # Sampled sequences are well formed: they survive sequence -> codes -> sequence unchanged.
  codes = dq.sequence_to_codes(layout, a)
  again = dq.codes_to_sequence(layout, codes["fine_mask"], codes["codes_coarse"], codes["codes_fine"], codes["labels"])
  for k in ("content", "position", "segment"):
    np.testing.assert_array_equal(again[k], a[k])
  np.testing.assert_array_equal(codes["labels"], labels)
  assert len(set(np.asarray(codes["fine_mask"]).sum(1).tolist())) > 1     # variable length


def test_sequence_loss_learns_and_fixed_map_forces_positions():
  from adaflow.models.dq_transformer import sample_sequences, sequence_loss
  layout, model, params = _tiny_transformer()
  mask, cc, cf, labels = _random_codes(jax.random.PRNGKey(5), layout, 8)
  seq = dq.codes_to_sequence(layout, mask, cc, cf, labels)
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(p, o):
    (l, m), g = jax.value_and_grad(lambda q: sequence_loss(model, q, seq), has_aux=True)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, l
  l0 = None
  for _ in range(40):
    params, opt, l = step(params, opt, )
    l0 = float(l) if l0 is None else l0
  assert float(l) < 0.7 * l0
  fixed = dq.fixed_fine_map(layout.nc, 0.5)
  s = jax.jit(lambda p: sample_sequences(model, p, jax.random.PRNGKey(0), jnp.array([0, 1]), fixed_map=fixed))(params)
  np.testing.assert_array_equal(dq.sequence_to_codes(layout, s)["fine_mask"], np.stack([fixed, fixed]))


def test_load_frozen_run_pins_the_upstream_step(tmp_path):
  """`load_frozen_run` (the DQ-Transformer's tokenizer, the step policy's generator): an explicit
  step, else the step stored in this run's config.json for the same upstream run, else the latest;
  the step used is written into the config; a pinned step that is gone is one line naming the field."""
  import json
  from adaflow.config_defaults import base_config
  from adaflow.methods import load_frozen_run
  steps = {"/up": [2, 4]}
  asked = []

  def load_run(workdir, step=None):
    asked.append(step)
    if step is not None and step not in steps[workdir]:
      raise ValueError(f"{workdir}/checkpoints has no checkpoint at step {step} (it has steps {steps[workdir]})")
    return "trainer", {"w": step}, step if step is not None else max(steps[workdir])
  c = base_config()
  c.selector.generator_workdir = "/up"
  run = tmp_path / "run"
  assert load_frozen_run(c, load_run, str(run), "selector", "generator", "x") == ("trainer", {"w": None})
  assert c.selector.generator_step == 4 and asked == [None]            # a new run: the latest, pinned
  run.mkdir()
  (run / "config.json").write_text(json.dumps({"selector": {"generator_workdir": "/up", "generator_step": 2}}))
  c.selector.generator_step = -1                       # resumed with a config file: the stored pin
  load_frozen_run(c, load_run, str(run), "selector", "generator", "x")
  assert asked[-1] == 2 and c.selector.generator_step == 2
  c.selector.generator_workdir, c.selector.generator_step, steps["/other"] = "/other", -1, [6]
  load_frozen_run(c, load_run, str(run), "selector", "generator", "x")   # another upstream run: its latest
  assert asked[-1] is None and c.selector.generator_step == 6
  c.tokenizer_workdir, c.tokenizer_step = "/up", 3
  with pytest.raises(ValueError, match=r"^config\.tokenizer_step: this run was trained on step 3 of /up, which is "
                     r"gone \(/up/checkpoints has no checkpoint at step 3 \(it has steps \[2, 4\]\)\)"):
    load_frozen_run(c, load_run, str(run), "", "tokenizer", "x")


@pytest.mark.slow
def test_dq_transformer_keeps_the_tokenizer_step_it_was_trained_on(tmp_path):
  """The DQ-Transformer's codes mean what its DQ-VAE's codebook meant when it trained: the tokenizer's
  step is pinned in the run's config (`tokenizer_step`), so training the DQ-VAE further does not
  change it (it silently loaded the latest), and when that step is gone, sampling and resuming (with
  a config file that leaves the step at -1) stop with one line naming the field."""
  import shutil
  from adaflow.methods import load_frozen_run
  from adaflow.train.loop import config_of, load_trainer_and_params, train
  v = tiny_dqvae_config()
  v.train.steps, v.train.ckpt_every, v.train.keep_checkpoints = 2, 2, 5
  vw, tw = str(tmp_path / "dqvae"), str(tmp_path / "dqt")
  train(v, vw, log=lambda m: None)
  t = tiny_dqvae_config()
  t.objective, t.tokenizer_workdir, t.train.steps = "dq_transformer", vw, 1
  t.dq_transformer.width, t.dq_transformer.depth_pos, t.dq_transformer.depth_content = 16, 1, 1
  train(t.copy_and_resolve_references(), tw, log=lambda m: None)
  assert config_of(tw).tokenizer_step == 2
  v.train.steps = 4
  train(v, vw, log=lambda m: None)                 # the DQ-VAE trained on: steps 2 and 4
  tr, _, _ = load_trainer_and_params(tw)
  _, step2, _ = load_trainer_and_params(vw, step=2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(tr.objective.tokenizer_params),
                         jax.device_get(step2))
  shutil.rmtree(tmp_path / "dqvae" / "checkpoints" / "2")
  with pytest.raises(ValueError, match=r"config\.tokenizer_step: this run was trained on step 2 of .*has steps \[4\]"):
    load_trainer_and_params(tw)
  t.train.steps = 2
  with pytest.raises(ValueError, match=r"config\.tokenizer_step: this run was trained on step 2"):
    train(t, tw, log=lambda m: None)             # t.tokenizer_step is -1: the stored pin is found
  load_frozen_run(t, load_trainer_and_params, str(tmp_path / "new"), "", "tokenizer", "test")
  assert t.tokenizer_step == 4                     # a new run takes the latest


def test_a_run_on_another_runs_data_names_the_flags_that_match_it(tmp_path):
  """A step policy (or DQ-Transformer) whose data is not its generator's (tokenizer's) stops before
  anything compiles with the `--config.data.*` flags that make it so (they named no field before)."""
  import types
  from adaflow.config_defaults import base_config
  from adaflow.data import get_info
  from adaflow.methods import data_flags, step_selector_objective
  gen_config = base_config()
  gen_config.data.update(name="folder", data_dir="/my photos", image_size=24, channels=3, crop="center",
                         random_flip=True)
  fake = types.SimpleNamespace(config=gen_config, info=types.SimpleNamespace(image_shape=(24, 24, 3), num_classes=0))
  c = base_config()
  c.objective, c.selector.generator_workdir = "step_selector", "/gen"
  flags = "--config.data.channels=3 --config.data.crop=center --config.data.data_dir='/my photos' " \
          "--config.data.image_size=24 --config.data.name=folder"
  assert data_flags(gen_config, c) == flags          # random_flip (augmentation) is not the data
  with pytest.raises(ValueError, match=r"^config\.data: the generator in /gen was trained on \(24, 24, 3\) with 0 "
                     r"classes, this config describes \(16, 16, 1\) with 10; use the generator's data config: "
                     + flags.replace("(", r"\(")):
    step_selector_objective(c, get_info(c.data), load_run=lambda w, step=None: (fake, {}, 1), workdir=str(tmp_path))
  c.data.update(name="folder", data_dir="/my photos", image_size=24, channels=3, crop="center")
  assert data_flags(gen_config, c) == ""
