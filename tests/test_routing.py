"""DiffCR token routing: exactness, gather/scatter, differentiable ratios, snapping, validation."""
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adaflow import methods
from adaflow.config_defaults import merged_config, routing_defaults
from adaflow.data.pipeline import DatasetInfo
from adaflow.models.dit import DiTBlock, dit_from_config
from adaflow.models.routing.ratios import (bin_pair, project_ratios, ratio_loss, ratio_table, region_index, snap_index,
                                           snapped_table)
from adaflow.models.routing.routed_dit import RoutedDiT, merge_params
from adaflow.models.routing.spec import RoutingSpec, spec_from_config
from adaflow.models.routing.tokens import (gather_tokens, masked_block, num_kept, residual_scales, routed_block,
                                           scatter_tokens, token_rank, top_k_indices)
from conftest import tiny_config

H, D, N, B = 16, 32, 16, 3


def _perturb(params, rng, scale=0.05, skip=("rho",)):
  """Adds noise to every leaf (adaLN and heads are zero at init, which would hide differences)."""
  flat = jax.tree_util.tree_flatten_with_path(params)
  leaves = []
  for i, (path, leaf) in enumerate(flat[0]):
    if any(getattr(p, "key", None) in skip for p in path):
      leaves.append(leaf)
    else:
      leaves.append(leaf + scale * jax.random.normal(jax.random.fold_in(rng, i), leaf.shape))
  return jax.tree_util.tree_unflatten(flat[1], leaves)


def _block():
  blk = DiTBlock(D, 2, D // 2, 4 * D, jnp.float32)
  x = jax.random.normal(jax.random.PRNGKey(0), (B, N, D))
  c = jax.random.normal(jax.random.PRNGKey(1), (B, D))
  params = _perturb(blk.init(jax.random.PRNGKey(2), x, c), jax.random.PRNGKey(3), 0.2)
  return blk, params, x, c


def _apply_block(blk, params, fn):
  return nn.apply(lambda mdl: fn(mdl), blk)(params)


TEST_BINS = (1.0, 0.8, 0.5)   # few bins keep the inference switch (one branch per bin) quick to compile


def _model(**routing_overrides):
  cfg = tiny_config(objective="routed_flow_matching")
  cfg.routing = routing_defaults()
  cfg.routing.bins = TEST_BINS
  cfg.routing.target = 0.75
  for k, v in routing_overrides.items():
    cfg.routing[k] = v
  model = RoutedDiT.from_dit(dit_from_config(cfg.model, (16, 16, 1), 10), spec_from_config(cfg))
  x = jax.random.normal(jax.random.PRNGKey(0), (B, 16, 16, 1))
  t = jnp.array([0.1, 0.4, 0.9])
  y = jnp.array([1, 2, 3])
  params = nn.meta.unbox(jax.jit(lambda r: model.init(r, x, t, y, mode="train"))(jax.random.PRNGKey(1)))
  return model, _perturb(params, jax.random.PRNGKey(2)), (x, t, y)


def _run(model, params, x, t, y, mode, stage=0):
  return jax.jit(model.apply, static_argnames=("mode", "stage"))(params, x, t, y, mode=mode, stage=stage)


def _with_rho(params, rho):
  p = jax.tree_util.tree_map(lambda a: a, params)
  p["params"]["rho"] = jnp.broadcast_to(jnp.asarray(rho, jnp.float32), p["params"]["rho"].shape)
  return p


def test_ratio_one_reproduces_dense_block_exactly():
  blk, params, x, c = _block()
  w = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(5), (B, N)))
  dense = _apply_block(blk, params, lambda m: m(x, c))
  routed = _apply_block(blk, params, lambda m: routed_block(m, x, c, w, N, "ste"))
  masked = _apply_block(blk, params, lambda m: masked_block(m, x, c, w, jnp.ones((B, N), bool), "ste"))
  np.testing.assert_array_equal(np.asarray(routed), np.asarray(dense))
  np.testing.assert_array_equal(np.asarray(masked), np.asarray(dense))
  # Whole model under jit: rho = 1 everywhere, training (interpolated) and inference (snapped)
  # paths. Separately compiled programs may fuse reductions differently, hence 1-ulp tolerance.
  model, mparams, (xi, t, y) = _model()
  mparams = _with_rho(mparams, 1.0)
  ref = _run(model, mparams, xi, t, y, "dense")
  for mode in ("train", "infer"):
    np.testing.assert_allclose(np.asarray(_run(model, mparams, xi, t, y, mode)), np.asarray(ref), rtol=1e-6, atol=1e-6)


def test_gather_scatter_round_trip_and_order():
  x = jax.random.normal(jax.random.PRNGKey(0), (B, N, D))
  w = jax.random.uniform(jax.random.PRNGKey(1), (B, N))
  k = 5
  idx = top_k_indices(w, k)
  chex.assert_shape(idx, (B, k))
  assert np.all(np.diff(np.asarray(idx), axis=-1) > 0), "kept indices must be in original order"
  expect = np.sort(np.argsort(-np.asarray(w), axis=-1)[:, :k], axis=-1)
  np.testing.assert_array_equal(np.asarray(idx), expect)
  sel = gather_tokens(x, idx)
  np.testing.assert_array_equal(np.asarray(scatter_tokens(x, idx, sel)), np.asarray(x))
  y = scatter_tokens(x, idx, sel + 1.0)
  changed = np.any(np.asarray(y) != np.asarray(x), axis=-1)
  np.testing.assert_array_equal(changed, np.asarray(token_rank(w)) < k)
  np.testing.assert_array_equal(np.asarray(gather_tokens(y, idx)), np.asarray(sel) + 1.0)


def test_masked_training_path_equals_gathered_block():
  blk, params, x, c = _block()
  w = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(5), (B, N)))
  for k in (3, 8, 12):
    keep = token_rank(w) < k
    gathered = _apply_block(blk, params, lambda m: routed_block(m, x, c, w, k, "ste"))
    masked = _apply_block(blk, params, lambda m: masked_block(m, x, c, w, keep, "ste"))
    np.testing.assert_allclose(np.asarray(masked), np.asarray(gathered), atol=2e-5, rtol=1e-5)
    unselected = ~np.asarray(keep)
    np.testing.assert_array_equal(np.asarray(gathered)[unselected], np.asarray(x)[unselected])


def test_bins_regions_and_snapping():
  bins = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
  j, lam = bin_pair(jnp.array([1.0, 0.85, 0.3, 0.05]), bins)
  np.testing.assert_array_equal(np.asarray(j), [6, 5, 0, 0])
  np.testing.assert_allclose(np.asarray(lam), [0.0, 0.5, 1.0, 1.0], atol=1e-5)
  edges = (0.0, 0.25, 0.5, 0.75, 1.0)
  # region r holds [b_r, b_{r+1}) (flow.TimePartition): a step starting on an edge is in the region above
  np.testing.assert_array_equal(np.asarray(region_index(jnp.array([0.0, 0.2499, 0.25, 0.26, 0.75, 1.0]), edges)),
                                [0, 0, 1, 1, 3, 3])
  snapped = np.asarray(bins)[np.asarray(snap_index(jnp.array([0.83, 0.86, 0.34, 0.1, 1.0]), bins))]
  np.testing.assert_allclose(snapped, [0.8, 0.9, 0.3, 0.3, 1.0])
  assert [num_kept(b, 64) for b in (1.0, 0.75, 0.5, 0.3)] == [64, 48, 32, 20]
  assert num_kept(0.9, 10) == 9 and num_kept(0.3, 10) == 3


def test_inference_snaps_to_nearest_bin_and_runs_once():
  model, params, (x, _, y) = _model()
  t = jnp.full((B,), 0.6)
  # rho = 0.7 snaps to the bin 0.8 (bins 1.0, 0.8, 0.5): same output as a fixed ratio 0.8.
  out = _run(model, _with_rho(params, 0.7), x, t, y, "infer")
  fixed = model.clone(routing=RoutingSpec(**{**model.routing.__dict__, "fixed_ratio": 0.8}))
  ref = _run(fixed, params, x, t, y, "infer")
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-6, atol=1e-6)
  other = fixed.clone(routing=RoutingSpec(**{**model.routing.__dict__, "fixed_ratio": 0.5}))
  assert not np.allclose(np.asarray(out), np.asarray(_run(other, params, x, t, y, "infer")), atol=1e-4)
  # Training at rho exactly on a bin equals that bin's (gathered) inference output.
  train = _run(model, _with_rho(params, 0.8), x, t, y, "train")
  np.testing.assert_allclose(np.asarray(train), np.asarray(ref), atol=5e-5)


def test_gradient_reaches_rho_of_the_used_regions_only():
  model, params, (x, t, y) = _model()
  params = _with_rho(params, 0.85)

  def f(rho):
    p = dict(params, params=dict(params["params"], rho=rho))
    return jnp.sum(jnp.square(model.apply(p, x, t, y, mode="train")))

  g = np.asarray(jax.jit(jax.grad(f))(params["params"]["rho"]))
  # t = [0.1, 0.4, 0.9] use regions 0, 1, 3 of 4; region 2 gets no example.
  assert np.all(np.abs(g[:, [0, 1, 3]]) > 0), g
  np.testing.assert_array_equal(g[:, 2], 0.0)


def test_weight_scale_multiplies_only_the_mlp_update():
  """routing.scale="weight" (DiffCR pseudocode, Mixture-of-Depths): out = x1 + w * mlp_update(x1)
  with x1 = x + attention_update(x) unscaled; "ste" scales both branches by exactly 1 forward."""
  blk, params, x, c = _block()
  w = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(4), (B, N)))
  zero = jnp.zeros((B, N, 1))
  after_attn = blk.apply(params, x, c, mlp_scale=zero)          # x1: the MLP update switched off
  mlp_update = blk.apply(params, x, c) - after_attn
  assert float(jnp.max(jnp.abs(mlp_update))) > 1e-2 and float(jnp.max(jnp.abs(after_attn - x))) > 1e-2
  got = blk.apply(params, x, c, **residual_scales(w, "weight"))
  np.testing.assert_allclose(got, after_attn + w[..., None] * mlp_update, atol=1e-5)
  np.testing.assert_array_equal(blk.apply(params, x, c, **residual_scales(w, "ste")), blk.apply(params, x, c))


def test_remat_routed_blocks_same_outputs_and_rho_gradient():
  """model.remat wraps the blocks that routing calls with attn_scale / mlp_scale / attn_mask keywords."""
  model, params, (x, t, y) = _model()
  remat = model.clone(remat=True)
  params = _with_rho(params, 0.85)

  def f(m):
    return jax.jit(jax.grad(lambda rho: jnp.sum(jnp.square(m.apply(dict(params, params=dict(params["params"], rho=rho)),
                                                                   x, t, y, mode="train")))))
  np.testing.assert_allclose(f(remat)(params["params"]["rho"]), f(model)(params["params"]["rho"]), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(_run(remat, params, x, t, y, "train"), _run(model, params, x, t, y, "train"), atol=1e-5)


def test_scanned_routed_layers_equal_the_loop():
  """Sampling with identical blocks runs one scanned layer body (block + router + bin switch, the
  layer's ratio row scanned): the same outputs (learned and fixed ratio) as the per-layer loop,
  and the program holds one block body per bin instead of one per bin and layer."""
  model, params, (x, t, y) = _model()
  assert model.depth > 1 and model.scan_blocks
  scan, loop = model, model.clone(scan_blocks=False)
  params = _with_rho(params, 0.7)
  dots = lambda m, p: str(jax.make_jaxpr(lambda q: m.apply(q, x, t, y, mode="infer"))(p)).count("dot_general")
  one_layer = model.clone(depth=1, scan_blocks=False)
  one_layer_params = nn.meta.unbox(one_layer.init(jax.random.PRNGKey(1), x, t, y, mode="train"))
  assert dots(scan, params) == dots(one_layer, one_layer_params) < dots(loop, params)
  t_one = jnp.full((B,), 0.6)
  np.testing.assert_allclose(_run(scan, params, x, t_one, y, "infer"), _run(loop, params, x, t_one, y, "infer"), atol=1e-5)
  fixed = lambda m: m.clone(routing=RoutingSpec(**{**m.routing.__dict__, "fixed_ratio": 0.5}))
  np.testing.assert_allclose(_run(fixed(scan), params, x, t_one, y, "infer"),
                             _run(fixed(loop), params, x, t_one, y, "infer"), atol=1e-5)


def test_snapped_table_compiles_only_the_used_bins_and_samples_the_same():
  """The sampler reads the snapped ratios from the trained params (`RoutingSpec.snapped`): the same
  outputs as choosing the bin on device, scanned or looped, with fewer block branches (a layer whose
  regions share a bin has no switch); the composed generator specializes through the driver."""
  model, params, (x, t, y) = _model(num_regions=2)
  rho = jnp.asarray([[1.0, 0.55], [0.95, 0.97]], jnp.float32)     # bins used: {1.0, 0.5} and {1.0}
  params = _with_rho(params, rho)
  table = tuple(tuple(float(b) for b in row) for row in snapped_table(ratio_table(params, model.routing), model.routing))
  assert table == ((1.0, 0.5), (1.0, 1.0))
  with_table = lambda m: m.clone(routing=RoutingSpec(**{**m.routing.__dict__, "snapped": table}))
  dots = lambda m: str(jax.make_jaxpr(lambda q: m.apply(q, x, t, y, mode="infer"))(params)).count("dot_general")
  for m in (model, model.clone(scan_blocks=False)):
    assert dots(with_table(m)) < dots(m)
    for t_one in (jnp.full((B,), 0.2), jnp.full((B,), 0.7)):
      # Same math; XLA fuses a branch outside a switch differently (float32 rounding, ~1e-7).
      np.testing.assert_allclose(_run(with_table(m), params, x, t_one, y, "infer"),
                                 _run(m, params, x, t_one, y, "infer"), atol=1e-5)
  with pytest.raises(ValueError, match="RoutingSpec.snapped"):
    model.clone(routing=RoutingSpec(**{**model.routing.__dict__, "snapped": ((1.0, 0.7),) * 2})).init(
        jax.random.PRNGKey(0), x, t, y, mode="train")
  # Through the composed generator: specialize() caches one generator per table.
  cfg = tiny_config(objective="routed_flow_matching")
  cfg.routing = routing_defaults()
  cfg.routing.bins, cfg.routing.num_regions = TEST_BINS, 2
  gen = methods.generator_for(cfg, DatasetInfo((16, 16, 1), 10, 100, tuple(map(str, range(10)))))
  spec_gen = gen.specialize(params)
  assert spec_gen is gen.specialize(params) and spec_gen is not gen
  assert spec_gen.models[0].routing.snapped == table and gen.models[0].routing.snapped is None
  labels = jnp.asarray([1, 2, 3])
  run = lambda g: jax.jit(lambda p: g.generate(p, jax.random.PRNGKey(0), labels, steps=3, method="euler"))(params)
  np.testing.assert_allclose(run(spec_gen), run(gen), atol=1e-5)


def test_ratio_loss_alone_moves_rho_to_target_within_bounds():
  spec = spec_from_config(merged_config({"routing": dict(target=0.5, num_regions=3)}))
  params = {"params": {"rho": jnp.ones((4, 3))}}
  tx = optax.sgd(3.0)
  opt = tx.init(params)
  losses = []
  for _ in range(40):
    loss, g = jax.value_and_grad(lambda p: ratio_loss(p["params"]["rho"], spec))(params)
    losses.append(float(loss))
    upd, opt = tx.update(g, opt, params)
    params = project_ratios(optax.apply_updates(params, upd), spec)
  rho = np.asarray(params["params"]["rho"])
  assert losses[-1] < 1e-3 * losses[0]
  np.testing.assert_allclose(rho.mean(), 0.5, atol=0.01)
  # Projection keeps rho in [rho_min, rho_max] even under a huge step.
  far = project_ratios({"params": {"rho": jnp.array([[-3.0, 5.0]])}}, spec)
  np.testing.assert_allclose(np.asarray(far["params"]["rho"]), [[0.1, 1.0]])


@pytest.mark.parametrize("field,value,match", [
    ("bins", (0.9, 0.5), "routing.bins"),                  # no 1.0
    ("bins", (1.0, 1.5, 0.5), "routing.bins"),             # out of (0, 1]
    ("bins", (1.0,), "routing.bins"),                      # a single bin
    ("target", 0.2, "routing.target"),                     # below the lowest bin 0.3
    ("fixed_ratio", 1.5, "routing.fixed_ratio"),
    ("rho_min", 0.0, "routing.rho_min"),
    ("init_ratio", 0.05, "routing.init_ratio"),
    ("num_regions", 0, "routing.num_regions"),
    ("boundaries", (0.0, 0.6, 0.4, 1.0), "routing.boundaries"),   # not increasing
    ("boundaries", (0.1, 0.5, 1.0), "routing.boundaries"),        # not starting at 0
    ("scale", "both", "routing.scale"),
    ("bogus", 1, "routing.bogus"),
])
def test_invalid_routing_config_rejected(field, value, match):
  cfg = tiny_config(objective="routed_flow_matching")
  cfg.routing = routing_defaults()
  if field == "boundaries":
    cfg.routing.num_regions = len(value) - 1
  cfg.routing[field] = value
  with pytest.raises(ValueError, match=match):
    methods.validate(cfg)


def test_regions_count_must_match_boundaries():
  cfg = tiny_config(objective="routed_flow_matching")
  cfg.routing = routing_defaults()
  cfg.routing.boundaries = (0.0, 0.3, 1.0)
  cfg.routing.num_regions = 4
  with pytest.raises(ValueError, match="routing.num_regions"):
    methods.validate(cfg)
  cfg.routing.num_regions = 2
  methods.validate(cfg)


def test_merge_dense_params_keeps_dense_weights_and_adds_routing():
  model, fresh, _ = _model()
  dense = {"params": {k: v for k, v in fresh["params"].items() if k != "rho" and not k.startswith("router_")}}
  dense = _perturb(dense, jax.random.PRNGKey(9))
  merged = merge_params(dense, fresh)
  chex.assert_trees_all_equal(merged["params"]["block_0"], dense["params"]["block_0"])
  chex.assert_trees_all_equal(merged["params"]["rho"], fresh["params"]["rho"])
  chex.assert_trees_all_equal(merged["params"]["router_1"], fresh["params"]["router_1"])
  bad = jax.tree_util.tree_map(lambda a: a, dense)
  bad["params"]["y_embed"] = jnp.zeros((3, 3))
  with pytest.raises(ValueError, match="y_embed"):
    merge_params(bad, fresh)


def test_routing_inside_a_patch_stage():
  """Routing wraps whichever stage's blocks run: k follows that stage's token count."""
  cfg = tiny_config(objective="routed_flow_matching")
  cfg.model.stage_groups = ((2, 2), (1, 1))
  cfg.routing = routing_defaults()
  cfg.routing.bins = TEST_BINS
  model = RoutedDiT.from_dit(dit_from_config(cfg.model, (16, 16, 1), 10), spec_from_config(cfg))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 1))
  t, y = jnp.array([0.2, 0.2]), jnp.array([0, 1])
  both = lambda m, *a: [m(*a, mode="train", stage=s) for s in (0, 1)]
  params = nn.meta.unbox(jax.jit(lambda r: model.init(r, x, t, y, method=both))(jax.random.PRNGKey(1)))
  params = _perturb(params, jax.random.PRNGKey(2))
  for stage in (0, 1):
    dense = model.apply(params, x, t, y, mode="dense", stage=stage)
    routed = _run(model, _with_rho(params, 0.5), x, t, y, "train", stage)
    chex.assert_shape(routed, (2, 16, 16, 1))
    assert not np.allclose(np.asarray(dense), np.asarray(routed), atol=1e-4)
    np.testing.assert_allclose(np.asarray(_run(model, _with_rho(params, 1.0), x, t, y, "train", stage)),
                               np.asarray(dense), rtol=1e-6, atol=1e-6)


def test_inspect_table_and_heatmap(tmp_path):
  from adaflow.commands.inspect import format_ratio_table, save_heatmap
  table = np.array([[1.0, 0.72], [0.55, 0.31]], np.float32)
  spec = spec_from_config(merged_config({"routing": dict(num_regions=2)}))
  snapped = snapped_table(table, spec)
  np.testing.assert_allclose(snapped, [[1.0, 0.7], [0.6, 0.3]])
  text = format_ratio_table(table, snapped, spec.boundaries, 64)
  assert "0.720 [0.7/45]" in text and "0.310 [0.3/20]" in text and "(0.50,1.00]" in text
  path = str(tmp_path / "r.png")
  save_heatmap(table, spec.boundaries, path)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_finetune_from_dense_checkpoint_and_inspect(tmp_path):
  """CLI path: dense run -> routed fine-tune with init_params -> `inspect ratios`."""
  from adaflow.train.loop import train
  from adaflow.train.loop import load_params
  dense_dir, routed_dir = str(tmp_path / "dense"), str(tmp_path / "routed")
  train(tiny_config(**{"train.steps": 2}), dense_dir, log=lambda m: None)
  dense = load_params(dense_dir)
  cfg = tiny_config(**{"train.steps": 3, "objective": "routed_flow_matching"})
  cfg.routing = routing_defaults()
  cfg.routing.bins = TEST_BINS
  cfg.routing.ratio_lr_scale = 50.0
  cfg.routing.target = 0.5
  state = train(cfg, routed_dir, init_params=dense, log=lambda m: None)
  rho = np.asarray(state.params["params"]["rho"]) * 50.0
  assert np.all(rho < 1.0) and np.all(rho >= 0.1)
  p0 = jax.device_get(state.params)["params"]
  assert set(dense["params"]) < set(p0)
  import subprocess, sys
  out = subprocess.run([sys.executable, "-m", "adaflow.cli", "inspect", "ratios", "--workdir", routed_dir],
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "mean learned ratio" in out.stdout and os.path.exists(os.path.join(routed_dir, "ratios.png"))
