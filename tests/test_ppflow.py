"""PPFlow: patch schedule, per-stage shapes, batch split, conversion from a one-level DiT, objective."""
import os
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaflow import methods
from adaflow import flow
from adaflow import data as data_lib
from adaflow.compose.objective import t_mass
from adaflow.methods import generator_for
from adaflow.models import ppflow as pp
from adaflow.models.dit import DiT
from adaflow.models.patchify import depth_to_space, space_to_depth, stage_position_embedding
from adaflow.methods import build_objective
from conftest import tiny_config

GROUPS3 = ((2, 2), (1, 2), (1, 1))


def pp_config(stages=((0.5, (4, 4)), (0.75, (2, 4)), (1.0, (2, 2))), **kw):
  c = tiny_config(**kw)
  c.objective = "ppflow"
  c.model.patch_size = 2
  c.model.stages = stages
  return c


def perturb(params, rng, scale=0.2):
  """Random values everywhere (DiT init zeroes adaLN and heads, which would make tests vacuous)."""
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree_util.tree_unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def small_dit(groups, image=(8, 8), channels=3):
  return DiT(image_size=image, in_channels=channels, patch_size=2, hidden_size=32, depth=2, num_heads=2,
             num_classes=10, stage_groups=groups, dtype=jnp.float32)


def init_all(model, rng, image=(8, 8), channels=3):
  def all_stages(m, x, t, y):
    return [m(x, t, y, stage=s) for s in range(m.num_stages)]
  x = jnp.zeros((1,) + image + (channels,))
  init = jax.jit(lambda r: model.init(r, x, jnp.zeros((1,)), jnp.zeros((1,), jnp.int32), method=all_stages))
  return nn.meta.unbox(init(rng))


def zeros_like_init(model, image=(8, 8), channels=3):
  """Parameters of the right shapes without running anything (for structure-only tests)."""
  shapes = jax.eval_shape(lambda r: init_all(model, r, image, channels), jax.random.PRNGKey(0))
  return jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), shapes)


# ---- patchify / schedule ---------------------------------------------------------------------

@pytest.mark.parametrize("g", [(2, 2), (1, 2), (2, 1)])
def test_space_to_depth_round_trip(g):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  y = space_to_depth(x, *g)
  assert y.shape == (2, 8 // g[0], 8 // g[1], 3 * g[0] * g[1])
  np.testing.assert_array_equal(depth_to_space(y, *g), x)
  # channel order (row offset, col offset, C)
  np.testing.assert_array_equal(y[0, 1, 1, 3 * (g[1] - 1):3 * g[1]], x[0, g[0], 2 * g[1] - 1])


def test_parse_stages_and_token_costs():
  s2 = pp.parse_stages(((0.5, (8, 8)), (1.0, (4, 4))), 4, (64, 64))
  assert s2.groups == ((2, 2), (1, 1)) and s2.t_starts == (0.0, 0.5)
  assert [s2.tokens(i) for i in range(2)] == [64, 256]
  assert _token_cost_ratio(s2) == pytest.approx(0.625)
  s3 = pp.parse_stages([[0.5, [8, 8]], [0.75, [4, 8]], [1, [4, 4]]], 4, (64, 64))
  assert s3.groups == GROUPS3 and _token_cost_ratio(s3) == pytest.approx(0.5)


def _token_cost_ratio(s):
  """Time-averaged token count relative to the finest stage: the paper's theoretical cost ratio."""
  return sum(span * s.tokens(i) for i, span in enumerate(s.spans)) / s.tokens(s.num_stages - 1)


@pytest.mark.parametrize("stages,needle", [
    (((0.75, (4, 4)), (0.5, (2, 4)), (1.0, (2, 2))), "increase strictly"),
    (((0.5, (4, 4)), (0.9, (2, 2))), "end at t = 1.0"),
    (((0.5, (3, 3)), (1.0, (2, 2))), "multiple of the base patch"),
    (((0.5, (12, 12)), (1.0, (2, 2))), "does not divide the image"),
    (((0.5, (4, 4)), (1.0, (4, 4))), "same patch shape"),
    (((0.5, 4), (1.0, (2, 2))), "must be (t_end, (patch_h, patch_w))"),
    ((), "non-empty"),
])
def test_bad_stage_configs_rejected(stages, needle):
  c = pp_config(stages=stages)
  info = data_lib.get_info(c.data)
  with pytest.raises(ValueError, match="config.model.stages") as e:
    methods.validate(c, info)
  assert needle in str(e.value)


def test_validator_other_fields():
  c = pp_config()
  info = data_lib.get_info(c.data)
  methods.validate(c, info)                       # the good config passes
  c.sample.cfg_scales = (1.0, 2.0)
  with pytest.raises(ValueError, match="config.sample.cfg_scales"):
    methods.validate(c, info)
  c = pp_config()
  c.objective = "flow_matching"
  with pytest.raises(ValueError, match="only objective 'ppflow'"):
    methods.validate(c, info)
  c = pp_config(**{"train.batch_size": 2})
  with pytest.raises(ValueError, match="config.train.batch_size"):
    methods.validate(c, info)


def test_stages_wider_than_the_model_are_flagged():
  """A coarse token holding more pixel values than the width cannot carry a velocity target's
  noise part (seen on the crops testbed: at width 128 an 8x8x3 = 192-value coarse stage ended its
  fine-tune at loss 0.53, a 4x8x3 = 96-value one at 0.09). over_capacity names such stages; validation warns unless
  the target is the data."""
  c = pp_config()                                   # 16x16 digits (1 channel), patch 2, width 32
  info = data_lib.get_info(c.data)
  ch = info.image_shape[-1]
  sched = pp.schedule_from_config(c, info.image_shape)
  assert [sched.values_per_token(s, ch) for s in range(3)] == [16 * ch, 8 * ch, 4 * ch]
  assert sched.over_capacity(ch, 32) == ((0,) if 16 * ch > 32 else ())
  assert sched.over_capacity(ch, 16 * ch - 1) == (0,)
  assert sched.over_capacity(ch, 16 * ch) == ()
  assert sched.over_capacity(ch, 4 * ch - 1) == (0, 1, 2)
  c.model.hidden_size = 8 * ch                      # stage 0 (4x4 patches) no longer fits
  c.model.num_heads = 1
  with pytest.warns(UserWarning, match=r"model.stages: stage 0's 4x4 patches .* flow.prediction='data'"):
    methods.validate(c, info)
  c.flow.prediction = "data"
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    methods.validate(c, info)


def test_stage_choice_at_boundaries():
  s = pp.parse_stages(((0.5, (4, 4)), (0.75, (2, 4)), (1.0, (2, 2))), 2, (16, 16))
  ts = [0.0, 0.25, 0.5 - 1e-6, 0.5, 0.75 - 1e-6, 0.75, 1.0]
  want = [0, 0, 0, 1, 1, 2, 2]                 # stage s holds [t_end[s-1], t_end[s])
  assert [int(s.partition.index(t)) for t in ts] == want
  np.testing.assert_array_equal(s.partition.index(jnp.asarray(ts, jnp.float32)), want)
  grid = np.linspace(0, 1, 17)
  pieces = s.partition.segments(grid)
  assert [(st, len(g) - 1) for st, g in pieces] == [(0, 8), (1, 4), (2, 4)]
  assert pieces[0][1][-1] == pieces[1][1][0] == 0.5 and pieces[2][1][-1] == 1.0
  # a grid that misses the boundaries gets them inserted: no stage runs outside its range
  pieces = s.partition.segments(np.linspace(0, 1, 6))                 # .2 apart vs boundaries .5, .75
  assert [st for st, _ in pieces] == [0, 1, 2]
  np.testing.assert_allclose(pieces[0][1], [0, .2, .4, .5])
  np.testing.assert_allclose(pieces[1][1], [.5, .6, .75])
  np.testing.assert_allclose(pieces[2][1], [.75, .8, 1.0])


def test_batch_split_proportions_and_t_ranges():
  assert pp.batch_split(128, (0.5, 0.25, 0.25)) == (64, 32, 32)
  assert pp.batch_split(10, (0.5, 0.5)) == (5, 5)
  assert pp.batch_split(7, (0.5, 0.25, 0.25)) in ((4, 2, 1), (3, 2, 2), (4, 1, 2))
  assert pp.batch_split(3, (0.98, 0.01, 0.01)) == (1, 1, 1)
  s = pp.parse_stages(((0.5, (4, 4)), (0.75, (2, 4)), (1.0, (2, 2))), 2, (16, 16))
  uni = tiny_config().flow
  uni.t_sampler = "uniform"
  stage_masses = lambda f: [t_mass(f, lo, hi) for lo, hi in zip(s.t_starts, s.t_ends)]
  assert stage_masses(uni) == pytest.approx((0.5, 0.25, 0.25))
  ln = tiny_config().flow                                        # logit-normal(0, 1)
  fr = stage_masses(ln)
  assert sum(fr) == pytest.approx(1.0) and fr[0] == pytest.approx(0.5)
  # the stratified draws reproduce the sampler's own distribution
  n = 20000
  counts = pp.batch_split(n, fr)
  draws = np.concatenate([np.asarray(flow.sample_t_in_range(jax.random.PRNGKey(i), c, lo, hi, ln))
                          for i, (c, lo, hi) in enumerate(zip(counts, s.t_starts, s.t_ends))])
  direct = np.asarray(jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(9), (n,))))
  np.testing.assert_allclose(np.quantile(draws, [0.1, 0.3, 0.6, 0.9]), np.quantile(direct, [0.1, 0.3, 0.6, 0.9]),
                             atol=0.01)
  for i, (c, lo, hi) in enumerate(zip(counts, s.t_starts, s.t_ends)):
    t = np.asarray(flow.sample_t_in_range(jax.random.PRNGKey(i), c, lo, hi, uni))
    assert t.min() >= lo and t.max() <= hi


def test_per_stage_shapes_and_positions():
  model = small_dit(GROUPS3, image=(8, 8))
  params = init_all(model, jax.random.PRNGKey(0))
  x = jnp.ones((2, 8, 8, 3))
  for s, n in enumerate([4, 8, 16]):
    tokens = model.apply(params, x, s, method=lambda m, x, s: m.embed(x, s))
    assert tokens.shape == (2, n, 32)
    out = model.apply(params, x, jnp.full((2,), 0.3), jnp.array([1, 2]), stage=s)
    assert out.shape == (2, 8, 8, 3)
  # stage positions are the base grid's positions at the merged blocks' first sub-patch
  dense = stage_position_embedding(32, (8, 8), 2, (1, 1)).reshape(4, 4, 32)
  np.testing.assert_allclose(stage_position_embedding(32, (8, 8), 2, (2, 2)).reshape(2, 2, 32), dense[::2, ::2],
                             atol=1e-6)
  np.testing.assert_allclose(stage_position_embedding(32, (8, 8), 2, (1, 2)).reshape(4, 2, 32), dense[:, ::2],
                             atol=1e-6)


# ---- conversion from a one-level DiT ----------------------------------------------------------

def _run_with_positions(module, x, t, y, pos):
  """The network with given token positions (stage 0 of `module`)."""
  c = module.condition(t, y, 0)
  tokens = module.embedders[0](x) + pos[None]
  for block in module.block_modules:
    tokens = block(tokens, c)
  return module.unembed(tokens, c, 0)


def test_converted_stage_reproduces_one_level_prediction():
  """At init, a large-patch stage on a locally constant image (constant on each gh x gw block,
  i.e. x = upsample(x_low)) computes exactly the one-level network on x_low (same token
  positions, level embedding set to 0) and returns its prediction upsampled; the finest stage is
  the one-level network itself. RGB, so a wrong channel order of the repeat would be caught."""
  dense_model = small_dit(((1, 1),))
  dense = perturb(init_all(dense_model, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
  pp_model = small_dit(GROUPS3)
  target = init_all(pp_model, jax.random.PRNGKey(2))
  conv = pp.convert_dense_params(dense, target, GROUPS3, 2, 3, 3)
  lvl = np.asarray(conv["params"]["level_embed"])
  assert lvl.shape == (3, 32) and 0.005 < lvl.std() < 0.05          # random N(0, 0.02), kept
  np.testing.assert_array_equal(conv["params"]["block_1"]["mlp"]["fc1"]["kernel"],
                                dense["params"]["block_1"]["mlp"]["fc1"]["kernel"])
  conv["params"]["level_embed"] = jnp.zeros_like(conv["params"]["level_embed"])

  t, y = jnp.array([0.2, 0.7]), jnp.array([3, 10])
  x_full = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 3))
  np.testing.assert_allclose(pp_model.apply(conv, x_full, t, y, stage=2),
                             dense_model.apply(dense, x_full, t, y), rtol=1e-5, atol=1e-4)
  for s, (gh, gw) in enumerate(GROUPS3[:2]):
    x_low = jax.random.normal(jax.random.PRNGKey(10 + s), (2, 8 // gh, 8 // gw, 3))
    x = jnp.repeat(jnp.repeat(x_low, gh, axis=1), gw, axis=2)
    got = pp_model.apply(conv, x, t, y, stage=s)
    low_model = small_dit(((1, 1),), image=(8 // gh, 8 // gw))
    pos = stage_position_embedding(32, (8, 8), 2, (gh, gw))
    ref = low_model.apply(dense, x_low, t, y, pos, method=_run_with_positions)
    want = jnp.repeat(jnp.repeat(ref, gh, axis=1), gw, axis=2)
    assert float(jnp.abs(want).max()) > 0.1                             # not a vacuous comparison
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    # the naive flat repeat (wrong channel order) does not reproduce it
    bad = jax.tree_util.tree_map(lambda a: a, conv)
    k = gh * gw
    bad["params"][f"embed_{s}"]["proj"]["kernel"] = jnp.repeat(dense["params"]["embed_0"]["proj"]["kernel"], k, 0) / k
    assert float(jnp.abs(pp_model.apply(bad, x, t, y, stage=s) - want).max()) > 1e-2


def test_convert_rejects_mismatched_model():
  dense = zeros_like_init(small_dit(((1, 1),)))
  other = DiT(image_size=(8, 8), in_channels=3, patch_size=2, hidden_size=64, depth=2, num_heads=2,
              num_classes=10, stage_groups=GROUPS3, dtype=jnp.float32)
  with pytest.raises(ValueError, match="does not match|no parameter"):
    pp.convert_dense_params(dense, zeros_like_init(other), GROUPS3, 2, 3, 3)
  deeper = DiT(image_size=(8, 8), in_channels=3, patch_size=2, hidden_size=32, depth=3, num_heads=2,
               num_classes=10, stage_groups=GROUPS3, dtype=jnp.float32)
  with pytest.raises(ValueError, match="no parameter 'block_2'"):
    pp.convert_dense_params(dense, zeros_like_init(deeper), GROUPS3, 2, 3, 3)
  with pytest.raises(ValueError, match="takes 12 values per token, the target's base patch 4x4x3"):
    pp.convert_dense_params(dense, zeros_like_init(small_dit(GROUPS3)), GROUPS3, 4, 3, 3)
  with pytest.raises(ValueError, match="one-level DiT"):
    three = zeros_like_init(small_dit(GROUPS3))
    pp.convert_dense_params(three, three, GROUPS3, 2, 3, 3)
  # `adaflow convert-stages` compares the two runs' configs first (a differing base patch was a
  # numpy reshape error after the target's init compiled); a DiT size name counts as its dims.
  from adaflow.pipelines.convert_stages import check_same_network
  from adaflow.models.dit import DIT_SIZES
  dense_cfg = tiny_config(**{"model.patch_size": 2})
  check_same_network(dense_cfg, pp_config(), "W")
  for field, value in (("patch_size", 4), ("hidden_size", 48), ("depth", 3), ("learn_sigma", True)):
    other = pp_config()
    other.model[field] = value
    with pytest.raises(ValueError, match=rf"^config.model.{field}: the dense run W has {field}=.*, this PPFlow config {value}; "
                                         rf".*--config.model.{field}="):
      check_same_network(dense_cfg, other, "W")
  named, dims = pp_config(), tiny_config(**{"model.patch_size": 2})
  named.model.size = "S"
  dims.model.depth, dims.model.hidden_size, dims.model.num_heads = DIT_SIZES["S"]
  check_same_network(dims, named, "W")
  named.model.size = "Q"            # not a size: left to the config check's own one-line error
  check_same_network(dense_cfg, named, "W")


# ---- objective -------------------------------------------------------------------------------

def test_objective_gradients_reach_every_stage_and_sampling():
  c = pp_config(**{"train.batch_size": 8, "flow.t_sampler": "uniform"})
  info = data_lib.get_info(c.data)
  methods.validate(c, info)
  obj = build_objective(c, info)
  assert pp.batch_split(8, obj.masses) == (4, 2, 2)
  params = perturb(nn.meta.unbox(jax.jit(obj.init)(jax.random.PRNGKey(0))), jax.random.PRNGKey(1), 0.05)
  assert {f"embed_{s}" for s in range(3)} <= set(params["params"])
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(2), (8, 16, 16, 1), minval=-1, maxval=1),
           "label": jnp.arange(8) % 10}
  (loss, m), grads = jax.jit(jax.value_and_grad(obj.loss, has_aux=True))(params, batch, jax.random.PRNGKey(3))
  assert np.isfinite(float(loss))
  # Plain floats on both sides: pytest.approx does not take JAX arrays (NotImplementedError in pytest 9).
  parts = [float(m[f"loss_stage{s}"]) for s in range(3)]
  np.testing.assert_allclose(float(loss), 0.5 * parts[0] + 0.25 * parts[1] + 0.25 * parts[2], rtol=1e-5)
  g = grads["params"]
  for s in range(3):
    for name in (f"embed_{s}", f"head_{s}"):
      norm = float(jnp.sqrt(sum(jnp.sum(v ** 2) for v in jax.tree_util.tree_leaves(g[name]))))
      assert norm > 0, name
  assert np.all(np.linalg.norm(np.asarray(g["level_embed"]), axis=1) > 0)



def test_sampling_switches_stage_with_per_stage_cfg():
  c = pp_config(stages=((0.5, (4, 4)), (1.0, (2, 2))))
  info = data_lib.get_info(c.data)
  obj = build_objective(c, info)
  params = perturb(nn.meta.unbox(jax.jit(obj.init)(jax.random.PRNGKey(0))), jax.random.PRNGKey(1), 0.05)
  labels = jnp.arange(2)

  def sample(cfg):   # a PPFlow run samples with the composed generator (adaflow.methods.generator_for)
    gen = generator_for(cfg, info)
    return jax.jit(lambda p, r, y: gen.generate(p, r, y, steps=4, method="euler", cfg_scale=1.0))(
        params, jax.random.PRNGKey(4), labels)
  a = sample(c)
  assert a.shape == (2, 16, 16, 1) and bool(jnp.all(jnp.isfinite(a)))
  # the same integration written out: stage 0 on [0, .25, .5], stage 1 on [.5, .75, 1]
  x = jax.random.normal(jax.random.PRNGKey(4), (2, 16, 16, 1))
  for s, (t0, t1) in enumerate([(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]):
    v = obj.apply(params, x, jnp.full((2,), t0), labels, stage=s // 2)
    x = x + (t1 - t0) * v
  np.testing.assert_allclose(a, x, rtol=1e-4, atol=1e-4)
  # per-stage CFG: changing only the last stage's scale changes the result
  c3 = c.copy_and_resolve_references()
  c3.sample.cfg_scales = (1.0, 3.0)
  b = sample(c3)
  assert float(jnp.abs(a - b).max()) > 1e-4
  c3.sample.cfg_scales = (1.0, 2.0, 3.0)
  with pytest.raises(ValueError, match="config.sample.cfg_scales"):
    generator_for(c3, info)


@pytest.mark.slow
def test_convert_stages_workdir_round_trip(tmp_path):
  """`adaflow convert-stages` path: dense run -> step-0 PPFlow checkpoint -> fine-tune resumes it."""
  from adaflow.pipelines.convert_stages import convert_workdir
  from adaflow.train.loop import train
  from adaflow.train.loop import load_trainer_and_params
  dense_cfg = tiny_config(**{"model.patch_size": 2, "train.steps": 2, "train.ckpt_every": 2})
  train(dense_cfg, str(tmp_path / "dense"), log=lambda m: None)
  cfg = pp_config(stages=((0.5, (4, 4)), (1.0, (2, 2))), **{"train.steps": 2, "train.ckpt_every": 2})
  convert_workdir(str(tmp_path / "dense"), cfg, str(tmp_path / "pp"), log=lambda m: None)
  _, dense, _ = load_trainer_and_params(str(tmp_path / "dense"))
  tr, conv, step = load_trainer_and_params(str(tmp_path / "pp"))
  assert step == 0 and tr.objective.spec.schedule.num_stages == 2
  np.testing.assert_array_equal(conv["params"]["head_1"]["linear"]["kernel"], dense["params"]["head_0"]["linear"]["kernel"])
  np.testing.assert_allclose(conv["params"]["embed_0"]["proj"]["kernel"],
                             pp.repeat_embed_kernel(np.asarray(dense["params"]["embed_0"]["proj"]["kernel"]), 2, (2, 2), 1))
  state = train(cfg, str(tmp_path / "pp"), log=lambda m: None)      # resumes from the converted step 0
  assert int(state.step) == 2
  with pytest.raises(ValueError, match="config.objective"):
    convert_workdir(str(tmp_path / "dense"), dense_cfg, str(tmp_path / "bad"), log=lambda m: None)
  # Another network than the dense run's (here its base patch): one line before anything is built.
  other = pp_config(stages=((0.5, (8, 8)), (1.0, (4, 4))))
  other.model.patch_size = 4
  with pytest.raises(ValueError, match=r"^config.model.patch_size: the dense run .* has patch_size=2, this PPFlow config 4"):
    convert_workdir(str(tmp_path / "dense"), other, str(tmp_path / "bad"), log=lambda m: None)
  assert not os.path.exists(tmp_path / "bad")
  with pytest.raises(ValueError, match=r"^--out .* is not writable"):   # a file as its folder: before converting
    convert_workdir(str(tmp_path / "dense"), cfg, str(tmp_path / "dense" / "config.json" / "pp"), log=lambda m: None)
