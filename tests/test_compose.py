"""Composition of PPFlow stages, DiffCR routing, timestep-grouped pruned sub-models and the AdaDiff
step policy (adaflow/compose): a single-method run samples through the composed generator
(`generator_for`) exactly as its method did; combinations run; invalid combinations fail before
jit."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaflow import config as config_lib
from adaflow import data as data_lib
from adaflow import flow
from adaflow.compose import flops as flops_lib
from adaflow.compose import model as model_lib
from adaflow.compose.generator import ComposedGenerator
from adaflow.methods import composed_config, generator_for
from adaflow.compose.model import finest_stage_view
from adaflow.compose.objective import ComposedObjective, cells
from adaflow.compose.sampler import ComposedSampler
from adaflow.compose.spec import spec_from_config
from adaflow.config_defaults import compose_defaults, merged_config, routing_defaults, selector_defaults
from adaflow.models.routing.ratios import ratio_table, snapped_table
from adaflow.models.routing.routed_dit import RoutedDiT
from adaflow.models.routing.spec import spec_from_config as routing_spec_from_config
from adaflow.models.dit import BlockSpec, dit_from_config
from adaflow.models.grouped import group_key
from adaflow.models import ppflow as ppflow_lib
from adaflow.objectives.step_selector import StepSelectorObjective
from adaflow.prune import budget as budget_lib
from adaflow.prune.slicing import Structure, slice_params
from conftest import tiny_config
from masking import mask_params

STAGES = ((0.5, (4, 4)), (0.75, (2, 4)), (1.0, (2, 2)))
BLOCKS = (((1, 64), (1, 32)), ((2, 128), (2, 128)))        # two groups: a pruned one, the full one
EDGES = (0.0, 0.6, 1.0)
STEPS = 4


def _config(**compose):
  c = tiny_config()
  c.model.patch_size = 2                      # 64 tokens at the finest stage, 16 at the coarsest
  c.sample.cfg_scale = 2.0
  c.routing = routing_defaults()
  c.routing.bins = (1.0, 0.5, 0.25)
  c.routing.num_regions = 2
  c.selector = selector_defaults()
  c.selector.step_set = (2, 4)
  c.selector.quality = "closeness"
  c.selector.hidden = 8
  c.selector.depth = 1
  c.compose = compose_defaults()
  for k, v in compose.items():
    c.compose[k] = v
  if compose.get("ppflow"):
    c.compose.stages = STAGES
  if compose.get("grouped"):
    c.compose.group_blocks = BLOCKS
    c.compose.group_edges = EDGES
  return c


def _info(c):
  return data_lib.get_info(c.data)


def _perturb(params, seed=5, scale=0.05):
  """Non-zero adaLN-Zero gates and heads, so every block and stage matters (numpy: no compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda l: np.asarray(l + scale * rng.standard_normal(np.shape(l)), np.float32), params)


def _init(obj, seed=0):
  """Unboxed params (jitted init: eager init compiles every op separately)."""
  return jax.device_get(nn.meta.unbox(jax.jit(obj.init)(jax.random.PRNGKey(seed))))


def _gen(obj, params, key, method="euler", steps=STEPS, b=3):
  fn = jax.jit(functools.partial(obj.generate, steps=steps, method=method, cfg_scale=2.0))
  return fn(params, key, _labels(b))


def _set_rho(params, values):
  p = jax.tree_util.tree_map(lambda a: a, params)
  p["params"]["rho"] = np.asarray(values, np.float32)
  return p


def _labels(b=3):
  return jnp.arange(b, dtype=jnp.int32) % 10


def _close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


# ---- a single-method run samples through the composed generator exactly as its method did -------
# Each reference below is the method's own sampler written out (what its objective's `generate` did
# before the composed generator became the only one): same key, bit-equal images on CPU.

def _reference(velocity, noise, runs, method):
  """runs [(key, sub_grid)] integrated in order; velocity(key) -> VelocityFn."""
  x = noise
  for k, sub in runs:
    x = flow.integrate(velocity(k), x, sub, method)
  return x


def _guided(obj, params, labels, scale, **apply_kw):
  def model_fn(x, t, y):
    return obj.interpolant.velocity(obj.apply(params, x, t, y, **apply_kw), x, t)
  return flow.guided(model_fn, labels, obj.null_label, scale)


def _noise(key, b=3):
  return jax.random.normal(key, (b, 16, 16, 1), jnp.float32)


class _Net:
  """A method's network applied as its own objective applied it before every DiT method became a
  preset of the composed objective: the DiT (with its stages, or routed) called directly."""

  def __init__(self, c, info):
    m = c.model.copy_and_resolve_references()
    self.schedule = None
    if c.model.stages:
      self.schedule = ppflow_lib.schedule_from_config(c, info.image_shape)
      m.stage_groups = tuple(self.schedule.groups)
    self.routed = c.objective == "routed_flow_matching"
    self.spec = routing_spec_from_config(c) if self.routed else None
    dit = dit_from_config(m, info.image_shape, info.num_classes)
    self.model = RoutedDiT.from_dit(dit, self.spec) if self.routed else dit
    self.interpolant, self.null_label, self.info = flow.make_interpolant(c.flow), info.num_classes, info

  def init(self, rng):
    kw = {"mode": "train"} if self.routed else {}
    return self.model.init(rng, *model_lib.dummy_inputs(self.info),
                           method=lambda mod, *a: [mod(*a, stage=s, **kw) for s in range(mod.num_stages)])

  def apply(self, params, x, t, y, **kw):
    return self.model.apply(params, x, t, y, **(dict(mode="infer", **kw) if self.routed else kw))


def _run_config(objective, **fields):
  c = _config()
  c.objective = objective
  for k, v in fields.items():
    c.model[k] = v
  return c


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_dense_run_samples_as_before(method):
  c = _run_config("flow_matching")
  info = _info(c)
  ref = _Net(c, info)
  params = _perturb(_init(ref, 0))
  gen = generator_for(c, info)
  assert gen.spec.name() == "dense"
  key = jax.random.PRNGKey(3)
  want = _reference(lambda _: _guided(ref, params, _labels(), 2.0), _noise(key), [(0, flow.time_grid(STEPS))], method)
  np.testing.assert_array_equal(np.asarray(_gen(gen, params, key, method)), np.asarray(want))


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_ppflow_run_samples_as_before(method):
  c = _run_config("ppflow", stages=STAGES)
  c.sample.cfg_scales = (1.0, 2.0, 3.0)
  info = _info(c)
  ref = _Net(c, info)
  params = _perturb(_init(ref, 0))
  gen = generator_for(c, info)
  assert gen.spec.name() == "ppflow"
  assert [s for (_, s, _), _ in flow.joint_segments(np.linspace(0, 1, STEPS + 1), gen.partitions())] == [0, 1, 2]
  key = jax.random.PRNGKey(4)
  runs = ref.schedule.partition.segments(flow.time_grid(STEPS))
  want = _reference(lambda s: _guided(ref, params, _labels(), (1.0, 2.0, 3.0)[s], stage=s), _noise(key), runs, method)
  np.testing.assert_array_equal(np.asarray(_gen(gen, params, key, method)), np.asarray(want))


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_routed_run_samples_as_before(method):
  c = _run_config("routed_flow_matching")
  info = _info(c)
  ref = _Net(c, info)
  params = _set_rho(_perturb(_init(ref, 0)), [[0.5, 1.0], [0.3, 0.6]])
  gen = generator_for(c, info)
  assert gen.spec.name() == "routing"
  snapped = snapped_table(ratio_table(params, gen.spec.routing), gen.spec.routing)
  assert snapped.min() < 1.0                                 # some blocks really drop tokens
  key = jax.random.PRNGKey(5)
  grid = flow.refine_grid(flow.time_grid(STEPS), [flow.TimePartition(ref.spec.boundaries)])
  want = _reference(lambda _: _guided(ref, params, _labels(), 2.0), _noise(key), [(0, grid)], method)
  np.testing.assert_array_equal(np.asarray(_gen(gen, params, key, method)), np.asarray(want))


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_grouped_model_samples_as_before(method):
  c = _config()
  c.sample.edges = "insert"      # the grouped model's own sampler inserted its edges (.6 is off the grid)
  info = _info(c)
  blocks = [tuple(BlockSpec(*b) for b in g) for g in BLOCKS]
  gen = ComposedGenerator(composed_config(c, groups=(blocks, EDGES)), info)
  params = _perturb(_init(gen, 0))
  dense = _Net(c, info)
  refs = [dense.model.clone(blocks=b, depth=len(b), parent=None) for b in blocks]

  def velocity(g):
    def model_fn(x, t, y):
      return dense.interpolant.velocity(refs[g].apply(params[group_key(g)], x, t, y), x, t)
    return flow.guided(model_fn, _labels(), dense.null_label, 2.0)
  key = jax.random.PRNGKey(6)
  want = _reference(velocity, _noise(key), flow.TimePartition(EDGES).segments(flow.time_grid(STEPS)), method)
  np.testing.assert_array_equal(np.asarray(_gen(gen, params, key, method)), np.asarray(want))


def test_generator_for_other_families_and_bad_objectives():
  c = _run_config("dqvae")
  with pytest.raises(ValueError, match="sample with their own objective"):
    generator_for(c, _info(c))
  with pytest.raises(ValueError, match="config.objective"):
    composed_config(c)
  # per-stage CFG scales of a PPFlow run are checked against its stages
  pc = _run_config("ppflow", stages=STAGES)
  pc.sample.cfg_scales = (1.0, 2.0)
  with pytest.raises(ValueError, match="config.sample.cfg_scales"):
    generator_for(pc, _info(pc))


def test_selector_only_equals_step_selector_sample_grouped():
  c = _config(selector=True)
  info = _info(c)
  gen = generator_for(c, info)
  params = _perturb(_init(gen, 0))
  ref = StepSelectorObjective(c, info, generator=gen, generator_params=params, classifier=None)
  policy = ref.init(jax.random.PRNGKey(1))
  policy["params"] = _perturb(policy["params"], seed=9, scale=3.0)       # a mixed, non-uniform policy
  labels = np.arange(10, dtype=np.int32)
  want = ref.sample_grouped(policy, jax.random.PRNGKey(2), labels, batch_size=8)
  assert len(set(want["steps"].tolist())) == 2, "test needs a policy that picks both step counts"
  # what eval.json records for the policy: its own actions and CFG scale, not config.sample's steps
  assert ref.sampling_record(99, "sde", 7.0) == dict(sample_method="step_policy", actions=["euler:2", "euler:4"],
                                                     cfg_scale=float(c.sample.cfg_scale))
  sampler = ComposedSampler(c, info, params, policy)
  got = sampler.sample(jax.random.PRNGKey(2), labels, batch_size=8)
  np.testing.assert_array_equal(got["steps"], want["steps"])
  _close(got["images"], want["images"])
  # and each image equals the dense sampler at its chosen step count from the same noise
  noise = ref.noise(jax.random.PRNGKey(2), len(labels))
  i = int(np.argmax(want["steps"] == 2))
  dense = _Net(c, info)
  vel = _guided(dense, params, jnp.asarray(labels[i:i + 1]), c.sample.cfg_scale)
  _close(got["images"][i:i + 1], flow.integrate(vel, noise[i:i + 1], flow.time_grid(2), c.sample.method))


# ---- combinations -----------------------------------------------------------------------------

def _all_params(c, info, seed=0):
  gen = ComposedGenerator(c, info)
  params = _perturb(_init(gen, seed))
  trees = [params[group_key(g)] for g in range(gen.spec.num_groups)] if gen.grouped else [params]
  for tree in trees:
    if "rho" in tree["params"]:
      tree["params"]["rho"] = np.full_like(tree["params"]["rho"], 0.5)
  return gen, params


def test_all_methods_compose_and_cost_less():
  c = _config(ppflow=True, routing=True, grouped=True, selector=True)
  info = _info(c)
  gen, params = _all_params(c, info)
  segs = [(g, s) for (g, s, _), _ in flow.joint_segments(np.linspace(0, 1, STEPS + 1), gen.partitions())]
  assert segs == [(0, 0), (0, 1), (1, 1), (1, 2)]   # group edge .6 inserted: each run inside one (group, stage)
  policy = StepSelectorObjective(c, info, generator=gen, generator_params=params, classifier=None).init(
      jax.random.PRNGKey(1))
  sampler = ComposedSampler(c, info, params, policy)
  out = sampler.sample(jax.random.PRNGKey(0), np.arange(4, dtype=np.int32), batch_size=8)
  assert out["images"].shape == (4, 16, 16, 1) and np.all(np.isfinite(out["images"]))
  assert set(out["steps"].tolist()) <= {2, 4}
  composed = sampler.flops_per_image(out["actions"])
  dense_c = _config()
  dense = flops_lib.sampling_flops(ComposedGenerator(dense_c, info), None, STEPS, dense_c.sample.method, 2.0)
  assert composed < 0.5 * dense


def test_flops_dense_matches_budget_and_routing_counts_kept_tokens():
  c = _config()
  info = _info(c)
  gen = ComposedGenerator(c, info)
  f = flops_lib.sampling_flops(gen, None, STEPS, "heun", 2.0)
  assert f == budget_lib.model_flops(gen.models[0]) * STEPS * 2 * 2
  rc = _config(routing=True)
  rgen = ComposedGenerator(rc, info)
  rp = _set_rho(nn.meta.unbox(jax.eval_shape(rgen.init, jax.random.PRNGKey(0))), np.ones((2, 2)))
  rp = jax.tree_util.tree_map(lambda a: np.ones(a.shape, np.float32), rp)
  full = flops_lib.sampling_flops(rgen, rp, STEPS, "euler", 1.0)
  n, d = 64, 32
  assert full == (budget_lib.model_flops(gen.models[0]) + 2 * 2 * n * d) * STEPS    # + two routers
  rp["params"]["rho"] = np.full((2, 2), 0.5, np.float32)
  assert flops_lib.sampling_flops(rgen, rp, STEPS, "euler", 1.0) < 0.7 * full


def _objective_grads(**compose):
  c = _config(**compose)
  c.objective = "composed"
  obj = ComposedObjective(c, _info(c))
  params = _init(obj, 0)
  batch = {"image": jnp.zeros((8, 16, 16, 1)), "label": jnp.arange(8, dtype=jnp.int32)}
  (loss, m), grads = jax.jit(jax.value_and_grad(obj.loss, has_aux=True))(params, batch, jax.random.PRNGKey(1))
  assert np.isfinite(float(loss))
  return obj, params, m, grads


@pytest.mark.slow
def test_composed_objective_trains_every_stage_of_every_group():
  obj, _, m, grads = _objective_grads(ppflow=True, grouped=True)
  assert [(g, s) for g, s, *_ in obj.cells] == [(0, 0), (0, 1), (1, 1), (1, 2)]
  assert sorted(k for k in m if k.startswith("loss_g")) == ["loss_g0s0", "loss_g0s1", "loss_g1s1", "loss_g1s2"]
  for g, s in [(0, 0), (0, 1), (1, 1), (1, 2)]:
    assert float(jnp.abs(grads[group_key(g)]["params"][f"head_{s}"]["linear"]["kernel"]).sum()) > 0, (g, s)
  assert float(jnp.abs(grads["group_0"]["params"]["head_2"]["linear"]["kernel"]).sum()) == 0   # no cell (0, 2)


@pytest.mark.slow
def test_composed_objective_with_routing_trains_ratios():
  obj, params, m, grads = _objective_grads(ppflow=True, routing=True, grouped=True)
  assert "ratio_loss" in m
  for g in ("group_0", "group_1"):
    assert float(jnp.abs(grads[g]["params"]["rho"]).sum()) > 0
  projected = obj.after_update(jax.tree_util.tree_map(lambda a: a + 5.0, params), None)
  assert float(projected["group_1"]["params"]["rho"].max()) <= 1.0


def test_dense_cells_are_one_cell():
  spec = spec_from_config(_config(), _info(_config()))
  assert len(cells(spec, _config().flow)) == 1


# ---- pruning keeps stage parameters, routers and rho --------------------------------------------

@pytest.mark.slow
def test_slicing_a_routed_ppflow_model_keeps_routers_and_stages():
  c = _config(ppflow=True, routing=True)
  info = _info(c)
  gen, params = _all_params(c, info)
  params = _set_rho(params, [[0.5, 1.0], [0.25, 0.75]])
  base = gen.models[0]
  s = Structure(heads=((), (0, 1)), mlp=((), tuple(range(0, 128, 2))))      # block 0 dropped
  sliced = slice_params(params, base, s)
  assert set(k for k in sliced["params"] if k.startswith("router_")) == {"router_0"}
  _close(sliced["params"]["router_0"]["kernel"], params["params"]["router_1"]["kernel"])
  _close(sliced["params"]["rho"], np.asarray(params["params"]["rho"])[1:])
  small = base.clone(blocks=s.block_specs(), depth=1, parent=None)
  masked = mask_params(params, base, s)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 1))
  t, y = jnp.full((2,), 0.7), jnp.arange(2, dtype=jnp.int32)
  for stage in (0, 2):
    f_small = jax.jit(functools.partial(small.apply, stage=stage, mode="infer"))
    f_base = jax.jit(functools.partial(base.apply, stage=stage, mode="infer"))
    _close(f_small(sliced, x, t, y), f_base(masked, x, t, y))


@pytest.mark.slow
def test_finest_stage_view_equals_the_finest_stage():
  c = _config(ppflow=True, routing=True)
  info = _info(c)
  gen, params = _all_params(c, info)
  view = finest_stage_view(params, 2)
  dc = _config()
  dense = dit_from_config(dc.model, info.image_shape, info.num_classes)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 1))
  t, y = jnp.asarray([0.8, 0.9]), jnp.arange(2, dtype=jnp.int32)
  _close(dense.apply(view, x, t, y), gen.models[0].apply(params, x, t, y, stage=2, mode="dense"))


# ---- invalid combinations ----------------------------------------------------------------------

def test_selector_without_generator_params_rejected():
  c = _config(selector=True)
  with pytest.raises(ValueError, match="no generator params"):
    ComposedSampler(c, _info(c), None, {"params": {}})


def test_selector_without_policy_params_rejected():
  c = _config(selector=True)
  info = _info(c)
  params = _init(_Net(c, info), 0)
  with pytest.raises(ValueError, match="no policy params"):
    ComposedSampler(c, info, params)
  with pytest.raises(ValueError, match="compose.selector is False"):
    ComposedSampler(_config(), info, params, {"params": {}})


def test_routing_bins_must_fit_the_coarse_stage_tokens():
  c = _config(ppflow=True, routing=True)
  c.routing.bins = (1.0, 0.5, 0.05)          # 0.05 * 16 coarse tokens < 1 token
  c.routing.target = 0.5
  with pytest.raises(ValueError, match=r"config.routing.bins: bin 0.05 keeps 0.80 < 1 of the 16 tokens of PPFlow stage 0"):
    spec_from_config(c, _info(c))
  c.routing.bins = (1.0, 0.99, 0.5)          # 0.99 and 1.0 keep the same 64 tokens at the finest stage
  with pytest.raises(ValueError, match="two bins keep the same count"):
    spec_from_config(c, _info(c))


def test_grouped_params_must_match():
  c = _config(grouped=True)
  info = _info(c)
  gen = ComposedGenerator(c, info)
  params = _init(gen, 0)
  with pytest.raises(ValueError, match=r"must have keys \['group_0', 'group_1'\]"):
    gen.check_params({"group_0": params["group_0"]})
  swapped = {"group_0": params["group_1"], "group_1": params["group_0"]}
  with pytest.raises(ValueError, match="shape mismatch"):
    gen.check_params(swapped)
  with pytest.raises(ValueError, match="turn compose.grouped on"):
    ComposedGenerator(_config(), info).check_params(params)


def test_routing_needs_routed_params_and_ppflow_needs_stage_params():
  c = _config(routing=True, ppflow=True)
  info = _info(c)
  dense = _init(_Net(_config(), info))
  with pytest.raises(ValueError, match="routers/rho missing.*stage embeddings differ"):
    ComposedGenerator(c, info).check_params(dense)


@pytest.mark.parametrize("field,value,match", [
    ("stages", STAGES, "compose.stages: is set but compose.ppflow is False"),
    ("group_edges", (0.0, 1.0), "compose.group_blocks: pruned structures are given but compose.grouped is False"),
    ("turbo", True, "config.compose.turbo: unknown field"),
])
def test_invalid_compose_fields(field, value, match):
  c = _config()
  with c.unlocked():
    c.compose[field] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)          # the schema: an unknown field
    spec_from_config(c, _info(c))   # the composition


def test_compose_flags_must_be_booleans():
  given = _config().to_dict()            # e.g. a config.json written by hand
  given["compose"]["ppflow"] = "yes"
  with pytest.raises(ValueError, match="compose.ppflow: has type str, expected the type of its default False"):
    merged_config(given)


def test_grouped_structures_must_agree():
  c = _config(grouped=True)
  c.compose.group_edges = (0.0, 0.3, 0.6, 1.0)
  with pytest.raises(ValueError, match="2 groups .* need 3 edges"):
    spec_from_config(c, _info(c))
  c = _config(grouped=True)
  c.compose.group_blocks = (((3, 64),), ((2, 128),))        # 3 heads > the base model's 2
  with pytest.raises(ValueError, match=r"group_blocks\[0\]"):
    spec_from_config(c, _info(c))
  c = _config()
  c.compose.grouped = True
  with pytest.raises(ValueError, match="no pruned structures"):
    spec_from_config(c, _info(c))


def test_cfg_scales_and_stage_settings_need_ppflow():
  c = _config()
  c.sample.cfg_scales = (2.0, 2.0)
  with pytest.raises(ValueError, match="per-stage CFG scales need PPFlow"):
    spec_from_config(c, _info(c))
  c = _config(ppflow=True)
  c.sample.cfg_scales = (2.0, 2.0)
  with pytest.raises(ValueError, match="needs 3 non-negative scales"):
    spec_from_config(c, _info(c))
  c = _config(ppflow=True)
  c.compose.stages = ((0.5, (3, 3)), (1.0, (2, 2)))
  with pytest.raises(ValueError, match="config.compose.stages"):
    spec_from_config(c, _info(c))


def test_selector_step_set_validated_and_objective_rejects_selector():
  c = _config(selector=True)
  c.selector.step_set = (8, 4)
  with pytest.raises(ValueError, match="selector.step_set"):
    spec_from_config(c, _info(c))
  c = _config(selector=True)
  c.objective = "composed"
  with pytest.raises(ValueError, match="compose.selector"):
    ComposedObjective(c, _info(c))


# ---- the recipe -------------------------------------------------------------------------------

@pytest.mark.slow
def test_recipe_runs_every_stage_and_resumes(tmp_path):
  import os
  from adaflow.pipelines import recipe
  from adaflow.config_defaults import grouped_defaults
  c = _config(ppflow=True, routing=True, selector=True)
  c.compose.grouped = True
  c.grouped = grouped_defaults()
  c.grouped.num_groups, c.grouped.rounds, c.grouped.proposals_per_round = 2, 1, 1
  c.grouped.proxy_samples, c.grouped.importance_batches, c.grouped.mlp_granularity = 8, 1, 16
  for f in ("dense_steps", "ppflow_steps", "routing_steps", "grouped_steps", "selector_steps"):
    c.compose[f] = 2
  c.compose.selector_batch = 4
  c.eval.cache_dir = str(tmp_path / "cache")
  w = str(tmp_path / "w")
  summary = recipe.run_recipe(c, w)
  for stage in recipe.STAGES:
    assert os.path.exists(os.path.join(w, stage, "DONE")), stage
  assert summary["training_images"] == 4 * 2 * c.train.batch_size
  cfg, info, params, policy = recipe.load_composed(w)
  sampler = ComposedSampler(cfg, info, params, policy)
  assert sampler.spec.enabled == ("ppflow", "routing", "grouped", "selector")
  assert sampler.sample(jax.random.PRNGKey(0), np.arange(3, dtype=np.int32), batch_size=8)["images"].shape == (3, 16, 16, 1)
  # a finished recipe is skipped; a stage without DONE resumes from its checkpoint (no new steps)
  os.remove(os.path.join(w, "grouped", "DONE"))
  before = sorted(os.listdir(os.path.join(w, "grouped", "checkpoints")))
  recipe.run_recipe(c, w)
  assert os.path.exists(os.path.join(w, "grouped", "DONE"))
  assert sorted(os.listdir(os.path.join(w, "grouped", "checkpoints"))) == before


def _cli(argv, capsys):
  """`adaflow <argv>` in this process -> (exit code, stdout, stderr)."""
  from adaflow import cli
  cli.FLAGS.unparse_flags()
  try:
    with pytest.raises(SystemExit) as e:
      cli.main(["adaflow"] + argv)
  finally:
    cli.FLAGS.unparse_flags()
  out, err = capsys.readouterr()
  return e.value.code, out, err


def cli_fid(workdir: str, capsys) -> dict:
  """`adaflow eval fid` of `workdir` on 8 images against 16 of the dataset, random Inception weights
  at the smallest input size (the numbers mean nothing; the command runs) -> its result."""
  from test_multiprocess import _last_json
  code, out, err = _cli(["eval", "fid", f"--workdir={workdir}", "--num=8", "--ref=dataset", "--fid_ref_num=16",
                         "--fid_random_inception=3", "--fid_input_size=75", "--fid_batch=8", "--fid_gen_batch=8",
                         "--nofid_progress"], capsys)
  assert code == 0, err[-2000:]
  return _last_json(out)


def test_cli_samples_and_measures_a_compose_workdir_from_another_directory(tmp_path, monkeypatch, capsys):
  """`adaflow sample / eval fid --workdir W` of an `adaflow compose` workdir use the recipe's final
  generator (W/dense here: the same images as `--workdir W/dense`), also from another working
  directory than the one compose ran in (composed.json records the stage directories as compose was
  given them: a relative W here). They used to stop with "no checkpoint found under W/checkpoints"."""
  import json
  import os
  from PIL import Image
  from adaflow.pipelines import recipe
  c = _config()                # the recipe's dense stage alone: what is tested is finding its generator
  c.compose.dense_steps = 2
  c.eval.at_end = False
  monkeypatch.chdir(tmp_path)
  recipe.run_recipe(c, "w", log=lambda m: None)
  assert json.loads((tmp_path / "w" / "composed.json").read_text())["generator_dir"] == os.path.join("w", "dense")
  (tmp_path / "elsewhere").mkdir()
  monkeypatch.chdir(tmp_path / "elsewhere")
  w = str(tmp_path / "w")
  grids = {}
  for name, workdir in (("root", w), ("stage", os.path.join(w, "dense"))):
    code, _, err = _cli(["sample", f"--workdir={workdir}", "--num=4", f"--out={tmp_path / name}.png"], capsys)
    assert code == 0, err[-2000:]
    grids[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
  np.testing.assert_array_equal(grids["root"], grids["stage"])
  result = cli_fid(w, capsys)
  assert result["step"] == "composed" and result["num"] == 8 and np.isfinite(result["fid"])
  assert os.listdir(tmp_path / "elsewhere") == []


def test_inspect_ratios_of_a_routed_model_with_timestep_groups(tmp_path, monkeypatch, capsys):
  """`adaflow inspect ratios` of a composed model with routing and groups: one table and heat map per
  group, each the group's own ratios (the workdir's loading is test_cli_samples_... above)."""
  from absl import flags
  from adaflow.commands import inspect
  from adaflow.commands.common import LoadedGenerator
  c = _config(routing=True, grouped=True)
  c.objective = "composed"
  info = _info(c)
  gen = ComposedGenerator(c, info)
  params = jax.device_get(_init(gen, 0))
  params["group_1"]["params"]["rho"] = np.full_like(params["group_1"]["params"]["rho"], 0.4 / c.routing.ratio_lr_scale)
  monkeypatch.setattr(inspect, "load_generator", lambda w, cfg: LoadedGenerator(gen, params, c, info, None, 7))
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(["adaflow", f"--workdir={tmp_path}"])
    inspect.cmd_inspect_ratios()
  finally:
    flags.FLAGS.unparse_flags()
  out = capsys.readouterr().out
  assert "timestep group 0 (t in [0.000, 0.600))" in out and "timestep group 1 (t in [0.600, 1.000))" in out
  means = [float(line.split()[3].rstrip(",")) for line in out.splitlines() if line.startswith("mean learned ratio")]
  assert means == [1.0, 0.4]
  assert sorted(p.name for p in tmp_path.glob("*.png")) == ["ratios_group0.png", "ratios_group1.png"]
  # A heat-map path matplotlib cannot write is one error before the checkpoint is read (a traceback after).
  monkeypatch.setattr(inspect, "load_generator", lambda w, cfg: pytest.fail("read the checkpoint"))
  for bad, why in ((tmp_path / "r.xyz", "matplotlib cannot write 'xyz'"),
                   (tmp_path / "ratios_group0.png" / "x.png", "is not writable")):   # a file as its folder
    flags.FLAGS(["adaflow", f"--workdir={tmp_path}", f"--out={bad}"])
    try:
      with pytest.raises(ValueError, match=f"--out .*{why}"):
        inspect.cmd_inspect_ratios()
    finally:
      flags.FLAGS.unparse_flags()
