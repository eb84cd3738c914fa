"""Timestep-grouped train-then-prune: slicing == masking, budgets, FLOPs vs XLA, dispatcher,
search within budget, validation, resume of stage 2."""
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaflow.flow import LinearInterpolant, TimePartition
from adaflow.models.dit import BlockSpec, DiT
from adaflow.models.grouped import group_key
from adaflow.prune import budget as B
from adaflow.prune import importance
from adaflow.prune.groups import group_edges
from adaflow.prune.search import ImportanceProposer, MemoryBank, RandomProposer, SearchSpace, search_group
from adaflow.prune.slicing import Structure, slice_params, sub_model
from conftest import tiny_config
from masking import mask_params


def _dit(**kw):
  args = dict(image_size=(16, 16), in_channels=1, patch_size=4, hidden_size=32, depth=3, num_heads=2,
              num_classes=10, dtype=jnp.float32)
  args.update(kw)
  return DiT(**args)


def _inputs(b=3):
  x = jax.random.normal(jax.random.PRNGKey(0), (b, 16, 16, 1))
  return x, jnp.linspace(0.05, 0.95, b), jnp.arange(b, dtype=jnp.int32) % 11


def _params(model, seed=1):
  """Init (every stage) + noise so adaLN-Zero gates and the head are non-zero (every unit matters)."""
  p = {"params": {}}
  for stage in range(model.num_stages):
    p["params"].update(nn.meta.unbox(model.init(jax.random.PRNGKey(seed), *_inputs(1), stage=stage))["params"])
  leaves, tree = jax.tree_util.tree_flatten(p)
  keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(leaves))
  return jax.tree_util.tree_unflatten(tree, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


@pytest.mark.parametrize("heads,mlp", [
    (((1,), (0, 1), (0, 1)), (tuple(range(128)),) * 3),          # one head out of block 0
    (((0, 1),) * 3, ((0, 5, 7, 100), tuple(range(128)), (3,))),    # MLP channels out
    (((1,), (), (0,)), ((2, 9), (), ())),                          # block 1 dropped, a branch removed
])
def test_slicing_equals_masking(heads, mlp):
  base = _dit()
  params = _params(base)
  s = Structure(heads, mlp)
  small = sub_model(base, s)
  sliced = slice_params(params, base, s)
  # real smaller arrays with exactly the shapes the sub-model initialises
  want = jax.tree_util.tree_map(lambda a: a.shape, nn.meta.unbox(jax.eval_shape(small.init, jax.random.PRNGKey(0), *_inputs(1))))
  assert jax.tree_util.tree_map(lambda a: a.shape, sliced) == want
  out_sliced = small.apply(sliced, *_inputs())
  out_masked = base.apply(mask_params(params, base, s), *_inputs())
  out_full = base.apply(params, *_inputs())
  np.testing.assert_allclose(out_sliced, out_masked, atol=2e-5)
  assert float(jnp.abs(out_full - out_masked).max()) > 1e-3   # the removal did change the output


def test_budget_formula_and_orientation():
  f = 1000.0
  b = B.group_budgets(5, 0.5, f, "data")
  np.testing.assert_allclose(b, [(i / 5 + (5 - i) / 5 * 0.5) * f for i in range(1, 6)])
  np.testing.assert_allclose(b.sum(), f * ((5 + 1) / 2 + 0.5 * (5 - 1) / 2))
  np.testing.assert_allclose(b.mean() / f, 0.8)          # the paper's ~20% saving
  assert b[-1] == f and b[0] == pytest.approx(0.6 * f)
  np.testing.assert_allclose(B.group_budgets(5, 0.5, f, "noise"), b[::-1])
  np.testing.assert_allclose(B.group_budgets(1, 0.3, f), [f])


@pytest.mark.parametrize("n,k,largest,field", [(0, 0.5, "data", "num_groups"), (2.5, 0.5, "data", "num_groups"),
                                               (4, 0.0, "data", "grouped.k"), (4, 1.5, "data", "grouped.k"),
                                               (4, 0.5, "middle", "largest")])
def test_bad_n_k_rejected(n, k, largest, field):
  with pytest.raises(ValueError, match=field):
    B.group_budgets(n, k, 1.0, largest)
  from adaflow.config_defaults import grouped_defaults
  from adaflow.pipelines.grouped import validate_grouped
  c = tiny_config()
  import ml_collections
  c.grouped = ml_collections.ConfigDict({**grouped_defaults().to_dict(), "num_groups": n, "k": k, "largest": largest})
  with pytest.raises(ValueError, match=field):
    validate_grouped(c)
  with pytest.raises(ValueError, match="num_groups"):
    group_edges(0, LinearInterpolant())


@pytest.mark.parametrize("overrides,field", [({"stage2_warmup_steps": -5}, "grouped.stage2_warmup_steps"),
                                             ({"proxy_finetune_steps": 3, "proxy_lr": 0.0}, "grouped.proxy_lr")])
def test_stage2_warmup_and_proxy_lr_are_checked(overrides, field):
  """Both used to pass validation (a negative warmup reached the schedule, a zero proxy lr the search)."""
  from adaflow.pipelines.grouped import validate_grouped
  c = tiny_config()
  validate_grouped(c)
  c.grouped.update(overrides)
  with pytest.raises(ValueError, match=rf"^config\.{field}: "):
    validate_grouped(c)


def test_analytic_flops_match_xla():
  # Unrolled blocks: XLA's cost analysis counts a scanned (while-loop) body only once.
  base = _dit(hidden_size=64, num_heads=2).clone(scan_blocks=False, parent=None)
  params = _params(base)
  x, t, y = _inputs(1)
  for blocks in (None, (BlockSpec(1, 100), BlockSpec(2, 0), BlockSpec(0, 37))):
    m = base if blocks is None else base.clone(blocks=blocks, depth=len(blocks), parent=None)
    p = params if blocks is None else nn.meta.unbox(m.init(jax.random.PRNGKey(0), x, t, y))
    cost = jax.jit(lambda p: m.apply(p, x, t, y)).lower(p).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analytic = B.model_flops(base, blocks)
    # XLA also counts elementwise work (LayerNorm, softmax, GELU, adds): a few percent on top.
    assert analytic <= cost["flops"] <= 1.12 * analytic, (cost["flops"], analytic)


def test_snr_groups_and_dispatch_at_boundaries():
  e = group_edges(4, LinearInterpolant(), (-20.0, 20.0))
  snr = 20 * np.log10(e[1:-1] / (1 - e[1:-1]))
  np.testing.assert_allclose(snr, [-10.0, 0.0, 10.0], atol=1e-3)   # equal width in SNR dB
  t = np.asarray([0.0, np.nextafter(np.float32(e[1]), np.float32(0)), e[1], 0.5, e[3], 1.0], np.float32)
  partition = TimePartition(tuple(e))
  np.testing.assert_array_equal(partition.index(t), [0, 0, 1, 2, 3, 3])
  np.testing.assert_array_equal(np.asarray(partition.index(jnp.asarray(t))), [0, 0, 1, 2, 3, 3])
  grid = np.linspace(0, 1, 9)
  # grid .125 apart vs edges .240, .5, .760: .240 and .760 become grid points, .5 already is one,
  # so every step lies inside one group
  segs = partition.segments(grid)
  assert [g for g, _ in segs] == [0, 1, 2, 3]
  np.testing.assert_allclose(np.concatenate([sub[:-1] for _, sub in segs] + [[1.0]]),
                             [0, .125, e[1], .25, .375, .5, .625, .75, e[3], .875, 1])
  for g, sub in segs:
    assert e[g] - 1e-6 <= sub[0] and sub[-1] <= e[g + 1] + 1e-6


def test_grouped_sampling_picks_the_right_group():
  from adaflow.compose.generator import ComposedGenerator
  from adaflow.methods import composed_config
  from adaflow.compose.objective import ComposedObjective
  from adaflow.data import get_info
  c = tiny_config()
  info = get_info(c.data)
  edges = [0.0, 0.4, 1.0]
  full = tuple(BlockSpec(int(c.model.num_heads), int(c.model.hidden_size * c.model.mlp_ratio))
               for _ in range(int(c.model.depth)))
  gc = composed_config(c, groups=([(BlockSpec(1, 16),), full], edges))
  gen = ComposedGenerator(gc, info)            # the grouped model's sampler
  params = {group_key(i): _params(m, seed=i) for i, m in enumerate(gen.models)}
  x, _, y = _inputs(4)
  apply = [jax.jit(lambda p, x, t, y, g=g: gen.models[g].apply(p[group_key(g)], x, t, y)) for g in range(2)]
  # sampling: steps starting below 0.4 use group 0, the rest group 1
  rng = jax.random.PRNGKey(3)
  labels = jnp.asarray([1, 2], jnp.int32)
  got = jax.jit(lambda p, r, l: gen.generate(p, r, l, steps=5, method="euler", cfg_scale=1.0))(params, rng, labels)
  xs = jax.random.normal(rng, (2, 16, 16, 1))
  grid = np.linspace(0, 1, 6)
  for j in range(5):
    g = 0 if grid[j] < 0.4 else 1
    v = apply[g](params, xs, jnp.full((2,), grid[j], jnp.float32), labels)
    xs = xs + (grid[j + 1] - grid[j]) * v
  np.testing.assert_allclose(got, xs, atol=1e-4)
  with pytest.raises(ValueError, match="group_0"):
    gen.check_params({"g": params["group_0"]})
  loss, _ = jax.jit(ComposedObjective(gc, info).loss)(params, {"image": x, "label": y}, rng)
  assert np.isfinite(float(loss))


def test_sliced_model_keeps_stages():
  base = _dit(stage_groups=((1, 1), (2, 2)), depth=2)
  s = Structure(((0,), (0, 1)), ((1, 2), ()))
  small = sub_model(base, s)
  p = slice_params(_params(base), base, s)
  x, t, y = _inputs(2)
  for stage in (0, 1):
    assert small.apply(p, x, t, y, stage=stage).shape == x.shape


def _space(budget_frac, importance_fn=importance.magnitude):
  base = _dit(hidden_size=64, num_heads=4, depth=3)
  imp = importance_fn(_params(base), base)
  return SearchSpace(base, imp, budget_frac * B.model_flops(base), mlp_granularity=32), base


@pytest.mark.parametrize("frac", [0.6, 0.75, 0.9])
def test_every_group_within_budget_and_search_resumes(tmp_path, frac):
  space, base = _space(frac)
  # a cheap proxy standing in for the loss: prefers keeping MLP channels of block 0
  proxy = lambda s: -len(s.mlp[0]) - 0.1 * len(s.heads[1])
  bank = MemoryBank()
  best = search_group(space, ImportanceProposer(), proxy, bank, 0, rounds=2, per_round=3, log=lambda m: None)
  assert bank.rounds_done(0) == 2 and len(bank.for_group(0)) >= 3
  for e in bank.for_group(0):
    assert e.flops <= space.budget and e.flops == B.model_flops(base, e.structure.block_specs())
  assert best.score == min(e.score for e in bank.for_group(0))
  bank.save(str(tmp_path / "bank.json"))
  again = MemoryBank.load(str(tmp_path / "bank.json"))
  assert [e.to_json() for e in again.entries] == [e.to_json() for e in bank.entries]
  best2 = search_group(space, ImportanceProposer(), proxy, again, 0, rounds=4, per_round=3, log=lambda m: None)
  assert again.rounds_done(0) == 4 and best2.score <= best.score
  rb = MemoryBank()
  search_group(space, RandomProposer(), proxy, rb, 1, rounds=2, per_round=3, log=lambda m: None)
  assert rb.for_group(1) and all(e.flops <= space.budget for e in rb.for_group(1))


def test_greedy_cut_removes_least_important_units():
  space, base = _space(0.7)
  s = ImportanceProposer().propose(space, [], 0, 1, np.random.default_rng(0))[0]
  for b, kept in enumerate(s.heads):           # kept heads are the top ones by importance
    order = np.argsort(-space.importance.heads[b], kind="stable")
    assert set(kept) == set(order[:len(kept)].tolist())
  assert space.flops(s.counts()) <= space.budget
  assert space.flops(s.counts()) > space.budget - space.head_cost - space.block_overhead  # budget used


def test_taylor_importance_matches_masking_gradient():
  """Taylor score of a head = |d loss / d mask| at mask = 1 (mask scaling that head's proj rows)."""
  base = _dit()
  params = _params(base)
  x, t, y = _inputs(4)
  target = jnp.ones_like(x)
  loss = lambda p, batch: jnp.mean(jnp.square(base.apply(p, *batch) - target))
  imp = importance.taylor(params, base, loss, [(x, t, y)])

  def masked_loss(m):
    p = jax.tree_util.tree_map(lambda a: a, params)
    k = p["params"]["block_1"]["attn"]["qkv"]["kernel"].reshape(32, 3, 2, 16)
    p["params"]["block_1"]["attn"]["qkv"]["kernel"] = (k * m[None, None, :, None]).reshape(32, 96)
    pk = p["params"]["block_1"]["attn"]["proj"]["kernel"].reshape(2, 16, 32)
    p["params"]["block_1"]["attn"]["proj"]["kernel"] = (pk * m[:, None, None]).reshape(32, 32)
    qb = p["params"]["block_1"]["attn"]["qkv"]["bias"].reshape(3, 2, 16)
    p["params"]["block_1"]["attn"]["qkv"]["bias"] = (qb * m[None, :, None]).reshape(96)
    return loss(p, (x, t, y))
  g = jax.grad(masked_loss)(jnp.ones(2))
  np.testing.assert_allclose(imp.heads[1], np.abs(np.asarray(g)), rtol=1e-3, atol=1e-7)


def test_stage2_resumes_mid_group(tmp_path):
  """Stage 2 of one group, killed after its step-2 checkpoint, resumes to the same parameters."""
  from adaflow.data import get_info
  from adaflow.models.dit import dit_from_config
  from adaflow.config_defaults import grouped_defaults
  from adaflow.pipelines.grouped import group_config
  from adaflow.train.loop import train
  c = tiny_config()
  c.grouped = grouped_defaults()
  c.grouped.stage2_steps = 4
  c.train.ckpt_every = 2
  info = get_info(c.data)
  base = dit_from_config(c.model, info.image_shape, info.num_classes)
  s = Structure(((1,), (0, 1)), (tuple(range(0, 128, 2)), ()))
  gc = group_config(c, 1, s, (0.3, 0.7))
  init = slice_params(_params(base), base, s)
  wd = str(tmp_path / "group_1")
  full = train(gc, wd, init_params=init, log=lambda m: None)
  shutil.rmtree(os.path.join(wd, "checkpoints", "4"))
  logs = []
  resumed = train(gc, wd, init_params=None, log=logs.append)
  assert any("resumed" in m and m.rstrip().endswith("/2") for m in logs)
  assert int(resumed.step) == 4
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), full.params, resumed.params)
  assert jax.tree_util.tree_map(lambda a: a.shape, full.params) == jax.tree_util.tree_map(lambda a: a.shape, init)


@pytest.mark.parametrize("edges_rule", ["snap", "insert"])
def test_sampling_summary_counts_the_grid_the_grouped_sampler_uses(edges_rule):
  """grouped.json's FLOPs: unpruned groups cost exactly dense's FLOPs when the sampler snaps the
  grid onto the group edges (the default; the count once assumed the edges were inserted as extra
  steps: 10/8 here); with sample.edges="insert" the extra steps are counted."""
  from adaflow import data as data_lib
  from adaflow.models.dit import dit_from_config
  from adaflow.pipelines.grouped import grouped_generator, sampling_summary
  c = tiny_config(**{"sample.steps": 8, "sample.method": "heun", "sample.cfg_scale": 3.0, "sample.edges": edges_rule})
  info = data_lib.get_info(c.data)
  base = dit_from_config(c.model, info.image_shape, info.num_classes)
  full = Structure.full(base)
  edges = [float(e) for e in group_edges(4, LinearInterpolant())]
  assert sum(min(abs(e - k / 8) for k in range(9)) > 1e-3 for e in edges) == 2   # two edges fall between grid points
  result = {"edges": edges, "groups": [{"flops": B.model_flops(base), "structure": full.to_json()} for _ in range(4)]}
  summary = sampling_summary(c, result)
  gen = grouped_generator(c, result)
  steps = len(gen.sampling_grid(8)) - 1
  assert sum(summary["steps_per_group"]) == steps and all(n > 0 for n in summary["steps_per_group"])
  if edges_rule == "snap":
    assert steps == 8 and summary["flops_fraction"] == 1.0
  else:
    assert steps == 10 and summary["flops_fraction"] == pytest.approx(10 / 8)


@pytest.mark.slow
def test_driver_end_to_end_and_resume(tmp_path, capsys):
  """The whole schedule through the driver; then group 1 interrupted mid stage 2 and resumed."""
  from adaflow.config_defaults import grouped_defaults
  from adaflow.pipelines.grouped import run_grouped
  from adaflow.train.loop import load_params
  c = tiny_config()
  c.grouped = grouped_defaults()
  g = c.grouped
  g.num_groups, g.stage1_steps, g.stage2_steps = 2, 4, 4
  g.rounds, g.proposals_per_round, g.proxy_samples, g.mlp_granularity, g.importance_batches = 2, 2, 16, 32, 1
  c.train.ckpt_every = 2
  wd = str(tmp_path / "w")
  summary = run_grouped(c, wd, log=lambda m: None)
  for d in ("stage1", "prune", "group_0", "group_1"):
    assert os.path.isdir(os.path.join(wd, d))
  assert os.path.exists(os.path.join(wd, "train_complete.json"))    # the TPU watcher's sign of a finished job
  bank = json.load(open(os.path.join(wd, "prune", "memory_bank.json")))["entries"]
  assert {e["group"] for e in bank} == {0, 1}
  result = json.load(open(os.path.join(wd, "prune", "result.json")))
  for gr in result["groups"]:
    assert gr["flops"] <= gr["budget"]
  assert summary["flops_fraction"] < 1.0
  # `adaflow sample / eval` load the finished workdir as the composed generator with its groups.
  from adaflow.pipelines.grouped import load_grouped
  obj, params, cfg = load_grouped(wd)
  assert sorted(params) == ["group_0", "group_1"] and cfg.grouped.num_groups == 2
  y = jax.numpy.arange(3) % 10
  imgs = obj.generate(params, jax.random.PRNGKey(0), y, steps=4, method="euler")
  assert imgs.shape == (3,) + tuple(obj.info.image_shape) and np.all(np.isfinite(imgs))
  from test_compose import cli_fid     # `adaflow eval fid` of the workdir (it once looked for W/checkpoints)
  fid = cli_fid(wd, capsys)
  assert fid["step"] == "grouped" and fid["num"] == 8 and np.isfinite(fid["fid"])
  before = load_params(os.path.join(wd, "group_1"))
  os.remove(os.path.join(wd, "group_1", "DONE"))
  shutil.rmtree(os.path.join(wd, "group_1", "checkpoints", "4"))
  with pytest.raises(ValueError, match="has not finished stage 2"):
    load_grouped(wd)
  logs = []
  run_grouped(c, wd, log=logs.append)
  assert any("stage1: already finished" in m for m in logs) and any("pruning already finished" in m for m in logs)
  after = load_params(os.path.join(wd, "group_1"))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), before, after)


def test_load_grouped_rejects_a_plain_workdir(tmp_path):
  from adaflow.pipelines.grouped import is_grouped_workdir, load_grouped
  assert not is_grouped_workdir(str(tmp_path))
  with pytest.raises(ValueError, match="not a train-then-prune workdir"):
    load_grouped(str(tmp_path))
