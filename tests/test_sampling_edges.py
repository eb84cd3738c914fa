"""How the sampling grid meets partition edges (`sample.edges`: insert / snap / cross) and what a
multistep solver does across runs of a piecewise generator (`sample.multistep_history`), issue #25:
the same step count costs the same network evaluations for every method under snap and cross."""
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
from adaflow.compose.generator import ComposedGenerator
from adaflow.methods import composed_config
from adaflow.config_defaults import routing_defaults
from adaflow.models.dit import BlockSpec
from conftest import tiny_config

GROUPS = (0.0, 0.2403, 0.5, 0.7597, 1.0)     # the testbed's four groups, equal in SNR dB
STAGE_EDGE = 0.5


def test_snap_keeps_the_step_count_and_meets_the_edges_it_can():
  g = flow.time_grid(4)
  groups, stages = flow.TimePartition(GROUPS), flow.TimePartition((0.0, STAGE_EDGE, 1.0))
  snapped = flow.edge_grid(g, (stages, groups), "snap")
  np.testing.assert_allclose(snapped, [0.0, 0.2403, 0.5, 0.7597, 1.0])
  assert len(flow.edge_grid(g, (stages, groups), "insert")) == 7          # two extra steps
  np.testing.assert_array_equal(flow.edge_grid(g, (stages, groups), "cross"), g)
  # two edges nearest the same point: the first (priority) one gets it, the other stays off the grid
  np.testing.assert_allclose(flow.snap_grid(g, [0.26, 0.24]), [0.0, 0.26, 0.5, 0.75, 1.0])
  # an edge nearest an end of the grid is never met (the ends do not move)
  np.testing.assert_allclose(flow.snap_grid(flow.time_grid(2), [0.2403, 0.7597]), [0.0, 0.5, 1.0])
  for steps in (1, 2, 3, 5, 7, 12):
    out = flow.snap_grid(flow.time_grid(steps), GROUPS[1:-1])
    assert len(out) == steps + 1 and np.all(np.diff(out) > 0)
  with pytest.raises(ValueError, match="sample.edges"):
    flow.edge_grid(g, (stages,), "nearest")


def test_step_runs_name_the_networks_of_a_crossing_step():
  groups = flow.TimePartition(GROUPS)
  runs = flow.step_runs(flow.time_grid(4), (groups,))
  assert [(r.start, r.end) for r in runs] == [((0,), (1,)), ((1,), (1,)), ((2,), (2,)), ((2,), (3,))]
  # on the inserted grid every step lies in one bucket, as joint_segments keys it
  fine = flow.edge_grid(flow.time_grid(4), (groups,), "insert")
  assert [r.start for r in flow.step_runs(fine, (groups,))] == [k for k, _ in flow.joint_segments(fine, (groups,))]
  assert all(r.start == r.end for r in flow.step_runs(fine, (groups,)))


def _grouped(edges_rule, history="keep", method_cfg=2.0):
  c = tiny_config()
  c.model.patch_size = 2
  c.sample.cfg_scale = method_cfg
  c.sample.edges = edges_rule
  c.sample.multistep_history = history
  info = data_lib.get_info(c.data)
  blocks = [tuple(BlockSpec(*b) for b in g) for g in (((1, 64), (1, 32)), ((2, 64), (2, 64)), ((2, 128), (1, 64)),
                                                        ((2, 128), (2, 128)))]
  gen = ComposedGenerator(composed_config(c, groups=(blocks, GROUPS)), info)
  return gen, _perturbed(jax.device_get(nn.meta.unbox(jax.jit(gen.init)(jax.random.PRNGKey(0)))))


def _perturbed(params):
  """Non-zero adaLN-Zero gates and heads, so every block and group matters."""
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda l: np.asarray(l + 0.05 * rng.standard_normal(np.shape(l)), np.float32), params)


def _labels(b=3):
  return jnp.arange(b, dtype=jnp.int32) % 10


def _generate(gen, params, method, steps=4):
  fn = jax.jit(functools.partial(gen.generate, steps=steps, method=method, cfg_scale=2.0))
  return np.asarray(fn(params, jax.random.PRNGKey(7), _labels()))


def _velocity(gen, params, g):
  return gen.velocity_fn(params, g, 0, _labels(), 2.0)


@pytest.mark.parametrize("rule,nfe", [("insert", 12), ("snap", 8), ("cross", 8)])
def test_grouped_heun4_costs_the_requested_evaluations(rule, nfe):
  gen, params = _grouped(rule)
  assert gen.network_evaluations(4, "heun") == nfe
  per_group = [flops_lib.network_flops(m, 0) for m in gen.models]
  runs = gen.runs(gen.sampling_grid(4))
  want = sum(2 * (per_group[r.start[0]] + per_group[r.end[0]]) * (len(r.grid) - 1) for r in runs)   # CFG doubles
  assert flops_lib.sampling_flops(gen, params, 4, "heun", 2.0) == want


def test_cross_evaluates_each_network_where_it_owns_the_time():
  """Euler on the uniform grid with the velocity of the group holding each step's start; Heun's
  second evaluation by the group holding the step's end."""
  gen, params = _grouped("cross")
  key = jax.random.PRNGKey(7)
  noise = gen.noise(key, 3)
  groups = flow.TimePartition(GROUPS)
  grid = flow.time_grid(4)
  x_e = x_h = noise
  for a, b in zip(grid[:-1], grid[1:]):
    ga, gb = int(groups.index(a + 1e-6)), int(groups.index(b - 1e-6))
    v = _velocity(gen, params, ga)(x_e, jnp.full((3,), a, jnp.float32))
    x_e = x_e + (b - a) * v
    v0 = _velocity(gen, params, ga)(x_h, jnp.full((3,), a, jnp.float32))
    v1 = _velocity(gen, params, gb)(x_h + (b - a) * v0, jnp.full((3,), b, jnp.float32))
    x_h = x_h + (b - a) * 0.5 * (v0 + v1)
  np.testing.assert_allclose(_generate(gen, params, "euler"), np.asarray(x_e), atol=2e-5)
  np.testing.assert_allclose(_generate(gen, params, "heun"), np.asarray(x_h), atol=2e-5)


@pytest.mark.parametrize("history", ["keep", "restart"])
def test_ab2_history_across_groups(history):
  """keep: one Adams-Bashforth run over the whole grid, each velocity from its step's group;
  restart: an Euler step wherever the group changes (the behaviour before issue #25)."""
  gen, params = _grouped("snap", history)
  grid = gen.sampling_grid(8)
  groups = flow.TimePartition(GROUPS)
  x = gen.noise(jax.random.PRNGKey(7), 3)
  v_prev, h_prev, g_prev = None, None, None
  for a, b in zip(grid[:-1], grid[1:]):
    g = int(groups.index(a + 1e-6))
    v = _velocity(gen, params, g)(x, jnp.full((3,), a, jnp.float32))
    h = b - a
    if v_prev is None or (history == "restart" and g != g_prev):
      x = x + h * v
    else:
      r = h / h_prev
      x = x + h * ((1 + 0.5 * r) * v - 0.5 * r * v_prev)
    v_prev, h_prev, g_prev = v, h, g
  np.testing.assert_allclose(_generate(gen, params, "ab2", steps=8), np.asarray(x), atol=2e-5)


def test_routed_ab2_keeps_its_history_across_regions():
  """Routing regions change the ratio, not the weights: one multistep run over the grid (before
  issue #25 "composed AB2 4" restarted at each region, i.e. was Euler)."""
  c = tiny_config()
  c.model.patch_size = 2
  c.routing = routing_defaults()
  c.routing.bins = (1.0, 0.5)
  c.routing.num_regions = 2
  c.compose.routing = True
  info = data_lib.get_info(c.data)
  gen = ComposedGenerator(c, info)
  params = _perturbed(jax.device_get(nn.meta.unbox(jax.jit(gen.init)(jax.random.PRNGKey(0)))))
  assert len(gen.runs(gen.sampling_grid(4))) == 1
  want = flow.integrate(gen.velocity_fn(params, 0, 0, _labels(), 2.0), gen.noise(jax.random.PRNGKey(7), 3),
                        flow.time_grid(4), "ab2")
  np.testing.assert_allclose(_generate(gen, params, "ab2"), np.asarray(want), atol=2e-5)
  euler = _generate(gen, params, "euler")
  assert np.max(np.abs(euler - np.asarray(want))) > 1e-4      # ab2 is not Euler


def test_sampler_options_are_validated_before_anything_runs():
  c = tiny_config()
  c.sample.edges = "between"
  with pytest.raises(ValueError, match="sample.edges"):
    config_lib.validate(c, data_lib.get_info(c.data))
  c = tiny_config()
  c.sample.multistep_history = "forget"
  with pytest.raises(ValueError, match="sample.multistep_history"):
    config_lib.validate(c, data_lib.get_info(c.data))
