"""Flow matching: interpolant paths, time samplers, and exact integration of analytic fields."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from adaflow import flow
from adaflow.flow.interpolants import CosineInterpolant, LinearInterpolant


def gaussian_velocity(m, s):
  """Exact flow-matching velocity E[x - eps | x_t] for data N(m, s^2), noise N(0, 1)."""
  def v(x, t):
    tb = t[:, None]
    var = tb**2 * s**2 + (1 - tb) ** 2
    cov = tb * s**2 - (1 - tb)
    return m + cov / var * (x - tb * m)
  return v


@pytest.mark.parametrize("method,steps,tol", [("euler", 400, 0.03), ("heun", 40, 0.02)])
def test_sampler_reproduces_gaussian_target(method, steps, tol):
  m, s = 1.5, 0.5
  x0 = jax.random.normal(jax.random.key(0), (20000, 1))
  x1 = flow.sample(gaussian_velocity(m, s), x0, steps, method)
  assert abs(float(x1.mean()) - m) < tol
  assert abs(float(x1.std()) - s) < tol


def test_heun_is_more_accurate_than_euler_at_equal_steps():
  m, s = 1.5, 0.3
  x0 = jax.random.normal(jax.random.key(0), (4000, 1))
  err = {k: abs(float(flow.sample(gaussian_velocity(m, s), x0, 8, k).std()) - s) for k in ("euler", "heun")}
  assert err["heun"] < err["euler"]


def test_linear_path_and_target():
  x, e = jnp.ones((2, 2, 2, 1)), jnp.zeros((2, 2, 2, 1))
  t = jnp.array([0.25, 1.0])
  xt, u = LinearInterpolant().path(x, e, t)
  np.testing.assert_allclose(xt[0], 0.25)
  np.testing.assert_allclose(xt[1], 1.0)
  np.testing.assert_allclose(u, 1.0)


@pytest.mark.parametrize("prediction", ["velocity", "noise", "data"])
def test_cosine_prediction_converts_to_the_same_velocity(prediction):
  k1, k2 = jax.random.split(jax.random.key(0))
  x, e = jax.random.normal(k1, (4, 2, 2, 1)), jax.random.normal(k2, (4, 2, 2, 1))
  t = jnp.array([0.2, 0.4, 0.6, 0.8])
  ref = CosineInterpolant("velocity")
  xt, v_true = ref.path(x, e, t)
  interp = CosineInterpolant(prediction)
  _, target = interp.path(x, e, t)           # a perfect network outputs the target
  np.testing.assert_allclose(interp.velocity(target, xt, t), v_true, atol=1e-4)


def test_time_samplers_range_and_shape():
  cfg = ml_collections.ConfigDict(dict(t_sampler="logit_normal", logit_mean=0.0, logit_std=1.0))
  t = flow.sample_t(jax.random.key(0), 1000, cfg)
  assert t.shape == (1000,) and float(t.min()) > 0 and float(t.max()) < 1
  assert abs(float(jnp.median(t)) - 0.5) < 0.05
  cfg.t_sampler = "uniform"
  assert abs(float(flow.sample_t(jax.random.key(0), 10000, cfg).mean()) - 0.5) < 0.02
  cfg.t_sampler = "bogus"
  with pytest.raises(ValueError, match="flow.t_sampler"):
    flow.sample_t(jax.random.key(0), 4, cfg)


def test_cfg_combination():
  def model_fn(x, t, y):
    return jnp.where((y == 9)[:, None], 1.0, 3.0) * jnp.ones_like(x)
  fn = flow.guided(model_fn, jnp.array([0, 1]), null_label=9, scale=2.0)
  np.testing.assert_allclose(fn(jnp.zeros((2, 1)), jnp.zeros((2,))), 5.0)  # 1 + 2 * (3 - 1)
  plain = flow.guided(model_fn, jnp.array([0, 1]), null_label=9, scale=1.0)
  np.testing.assert_allclose(plain(jnp.zeros((2, 1)), jnp.zeros((2,))), 3.0)


def test_bad_sampler_settings():
  with pytest.raises(ValueError, match="sample.steps"):
    flow.time_grid(0)
  with pytest.raises(ValueError, match="sample.method"):
    flow.integrate(lambda x, t: x, jnp.zeros((1, 1)), np.linspace(0, 1, 3), "rk9")
