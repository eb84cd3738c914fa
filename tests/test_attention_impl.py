"""model.attention: the einsum path and jax.nn.dot_product_attention compute the same attention
(adaflow/models/dit.py::Attention); "auto" resolves per backend (adaflow/parallel/precision.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from adaflow.models import dit
from adaflow.parallel import precision


def _outputs(dtype, mask):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 32))
  mods = {impl: dit.Attention(32, 4, 8, dtype, impl) for impl in precision.ATTENTION_IMPLS}
  params = mods["einsum"].init(jax.random.PRNGKey(1), x, mask)          # same parameter tree for both
  return {impl: np.asarray(m.apply(params, x, mask), np.float32) for impl, m in mods.items()}


@pytest.mark.parametrize("masked", [False, True])
def test_einsum_and_dot_product_attention_agree(masked):
  mask = None
  if masked:   # token routing's key mask [B, 1, 1, N]: every query keeps at least one key
    mask = jnp.asarray(np.random.default_rng(0).random((2, 1, 1, 16)) < 0.6).at[:, :, :, 0].set(True)
  f32 = _outputs(jnp.float32, mask)
  np.testing.assert_allclose(f32["einsum"], f32["dot_product_attention"], rtol=1e-5, atol=1e-5)
  bf16 = _outputs(jnp.bfloat16, mask)
  err = np.abs(bf16["einsum"] - f32["einsum"]).max() / np.abs(f32["einsum"]).max()
  assert err < 3e-2, err              # bf16 inputs: a few bf16 ulps of the output scale
  assert np.abs(bf16["dot_product_attention"] - f32["einsum"]).max() / np.abs(f32["einsum"]).max() < 3e-2


def test_masked_keys_do_not_contribute():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 32))
  mask = jnp.ones((1, 1, 1, 8), bool).at[..., 5:].set(False)
  for impl in precision.ATTENTION_IMPLS:
    m = dit.Attention(32, 4, 8, jnp.float32, impl)
    params = m.init(jax.random.PRNGKey(1), x, mask)
    changed = x.at[:, 5:].set(100.0)                # only the masked keys' own rows change
    a, b = m.apply(params, x, mask), m.apply(params, changed, mask)
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-5, atol=1e-5)


def test_auto_resolves_per_backend_and_explicit_values_win():
  assert precision.resolve_attention("auto", platform="cpu")[0] == "einsum"
  assert precision.resolve_attention("auto", platform="tpu")[0] == "einsum"
  assert precision.resolve_attention("auto", platform="gpu")[0] == "dot_product_attention"
  for impl in precision.ATTENTION_IMPLS:
    assert precision.resolve_attention(impl, platform="cpu") == (impl, "set explicitly in model.attention")
  with pytest.raises(ValueError, match=r"model\.attention"):
    precision.resolve_attention("flash", platform="cpu")


def test_config_field_reaches_the_model_and_the_startup_line():
  c = tiny_config(**{"model.attention": "dot_product_attention"})
  model = dit.dit_from_config(c.model, (16, 16, 1), 10)
  assert model.attention == "dot_product_attention"
  assert "attention dot_product_attention (set explicitly" in precision.describe_compute_dtype(c.model)
  from adaflow import config as config_lib
  from adaflow import data as data_lib
  bad = tiny_config(**{"model.attention": "flash"})
  with pytest.raises(ValueError, match=r"model\.attention"):
    config_lib.validate_model(bad, data_lib.get_info(bad.data))
