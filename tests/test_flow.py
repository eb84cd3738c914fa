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


def sample(velocity_fn, noise, num_steps, method="euler", **solver_kw):
  """`num_steps` uniform steps of `flow.integrate` from noise (t = 0) to data (t = 1)."""
  return flow.integrate(velocity_fn, noise, flow.time_grid(num_steps), method, **solver_kw)


@pytest.mark.parametrize("method,steps,tol", [("euler", 400, 0.03), ("heun", 40, 0.02)])
def test_sampler_reproduces_gaussian_target(method, steps, tol):
  m, s = 1.5, 0.5
  x0 = jax.random.normal(jax.random.key(0), (20000, 1))
  x1 = sample(gaussian_velocity(m, s), x0, steps, method)
  assert abs(float(x1.mean()) - m) < tol
  assert abs(float(x1.std()) - s) < tol


def test_heun_is_more_accurate_than_euler_at_equal_steps():
  m, s = 1.5, 0.3
  x0 = jax.random.normal(jax.random.key(0), (4000, 1))
  err = {k: abs(float(sample(gaussian_velocity(m, s), x0, 8, k).std()) - s) for k in ("euler", "heun")}
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


# ---- multistep ODE, SDE, and the singular endpoints of noise / data prediction --------------------

def gaussian_posteriors(m, s):
  """E[x | x_t] and E[eps | x_t] for data N(m, s^2), noise N(0, 1), x_t = t x + (1 - t) eps."""
  def var(t):
    return t**2 * s**2 + (1 - t) ** 2

  def data(x, t):
    tb = t[:, None]
    return m + tb * s**2 / var(tb) * (x - tb * m)

  def noise(x, t):
    tb = t[:, None]
    return (1 - tb) / var(tb) * (x - tb * m)
  return data, noise


def transport(m, s, z):
  """The exact ODE map of the linear path for N(m, s^2) data: noise z -> m + s z."""
  return m + s * z


def test_ab2_is_second_order_with_one_call_per_step():
  m, s = 1.5, 0.5
  z = jnp.linspace(-3, 3, 61)[:, None]
  calls = []

  def v(x, t):
    calls.append(1)
    return gaussian_velocity(m, s)(x, t)
  err = {}
  for n in (10, 20):
    err[n] = float(jnp.max(jnp.abs(sample(v, z, n, "ab2") - transport(m, s, z))))
  euler = float(jnp.max(jnp.abs(sample(gaussian_velocity(m, s), z, 10, "euler") - transport(m, s, z))))
  assert err[10] < euler / 4, (err, euler)
  assert 3.0 < err[10] / err[20] < 5.0, err          # halving the step quarters the error
  assert len(calls) == 2                              # traced once per sample() call: one call per step


@pytest.mark.parametrize("form,norm", [("sigma", 1.0), ("constant", 0.5), ("linear", 1.0)])
def test_sde_reproduces_gaussian_target(form, norm):
  m, s = 1.5, 0.5
  interp = LinearInterpolant()
  x0 = jax.random.normal(jax.random.key(0), (20000, 1))
  x1 = sample(gaussian_velocity(m, s), x0, 100, "sde", interpolant=interp, rng=jax.random.key(1),
              diffusion_form=form, diffusion_norm=norm)
  assert abs(float(x1.mean()) - m) < 0.02
  assert abs(float(x1.std()) - s) < 0.02
  # The path is stochastic: another key gives other samples (with the same statistics).
  x2 = sample(gaussian_velocity(m, s), x0, 100, "sde", interpolant=interp, rng=jax.random.key(2),
              diffusion_form=form, diffusion_norm=norm)
  assert float(jnp.max(jnp.abs(x1 - x2))) > 0.05


def test_sde_with_zero_diffusion_is_euler_and_last_step_is_deterministic():
  m, s = 1.5, 0.5
  interp = LinearInterpolant()
  x0 = jax.random.normal(jax.random.key(0), (64, 1))
  kw = dict(interpolant=interp, rng=jax.random.key(3))
  np.testing.assert_allclose(sample(gaussian_velocity(m, s), x0, 8, "sde", diffusion_norm=0.0, **kw),
                             sample(gaussian_velocity(m, s), x0, 8, "euler"), atol=1e-6)
  # One step over [0, 1] is only the last step: deterministic, whatever the key.
  one = [sample(gaussian_velocity(m, s), x0, 1, "sde", interpolant=interp, rng=jax.random.key(k),
                diffusion_form="constant") for k in (4, 5)]
  np.testing.assert_array_equal(one[0], one[1])
  with pytest.raises(ValueError, match="sample.method='sde' needs the objective's interpolant"):
    sample(gaussian_velocity(m, s), x0, 4, "sde")
  with pytest.raises(ValueError, match="sample.diffusion_form"):
    sample(gaussian_velocity(m, s), x0, 4, "sde", diffusion_form="SBDM", **kw)


@pytest.mark.parametrize("prediction", ["noise", "data"])
@pytest.mark.parametrize("method", ["heun", "euler", "ab2"])
def test_noise_and_data_prediction_stop_short_of_the_singular_endpoint(prediction, method):
  """Exact Gaussian data, a 1e-3 error in the network's noise / data prediction, 10 steps: the
  output deviates < 1e-2 from the exact answer: the exact transport m + s z for Heun, for Euler and
  AB2 (whose own 10-step error is larger) the same sampler driven by the exact velocity.
  Evaluated at the endpoint itself (margin 0) the same error gives O(1)."""
  m, s = 0.5, 0.5
  z = jnp.linspace(-3, 3, 61)[:, None]
  data, noise = gaussian_posteriors(m, s)
  predict = data if prediction == "data" else noise
  exact_v = transport(m, s, z) if method == "heun" else sample(gaussian_velocity(m, s), z, 10, method)
  dev = {}
  for margin in (0.02, 0.0):
    interp = LinearInterpolant(prediction=prediction, endpoint_margin=margin)
    v = lambda x, t: interp.velocity(predict(x, t) + 1e-3, x, t)   # noqa: E731
    out = sample(v, z, 10, method, interpolant=interp)
    dev[margin] = float(jnp.max(jnp.abs(out - exact_v)))
  assert dev[0.02] < 1e-2, dev
  singular = (prediction == "noise") or method == "heun"   # Euler / AB2 never evaluate at t = 1
  if singular:
    assert dev[0.0] > 1.0, dev
