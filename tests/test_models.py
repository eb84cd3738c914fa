"""DiT backbone: shapes, dtypes, zero-init behaviour, gradients, patchify round trips."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adaflow.models import patchify
from adaflow.models.dit import DIT_SIZES, BlockSpec, DiT, dit_from_config
from adaflow.models.layers import sincos_2d, timestep_embedding


def small_dit(**kw):
  args = dict(image_size=(16, 16), in_channels=3, patch_size=2, hidden_size=32, depth=2, num_heads=2,
              num_classes=5, dtype=jnp.float32)
  args.update(kw)
  return DiT(**args)


def inputs(b=3, h=16, c=3):
  x = jax.random.normal(jax.random.key(1), (b, h, h, c))
  t = jnp.linspace(0.1, 0.9, b)
  y = jnp.arange(b) % 6
  return x, t, y


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(dtype):
  m = small_dit(dtype=dtype)
  x, t, y = inputs()
  variables = m.init(jax.random.key(0), x, t, y)
  params = nn.meta.unbox(variables)
  for leaf in jax.tree_util.tree_leaves(params):
    assert leaf.dtype == jnp.float32        # parameters stay float32 under mixed precision
  out = m.apply(params, x, t, y)
  chex.assert_shape(out, x.shape)
  assert out.dtype == jnp.float32


def test_zero_init_output_is_zero_and_learn_sigma_dropped():
  m = small_dit(learn_sigma=True)
  x, t, y = inputs()
  params = nn.meta.unbox(m.init(jax.random.key(0), x, t, y))
  assert params["params"]["head_0"]["linear"]["kernel"].shape[-1] == 2 * 2 * 3 * 2
  out = m.apply(params, x, t, y)
  chex.assert_shape(out, x.shape)
  np.testing.assert_array_equal(np.asarray(out), 0.0)   # adaLN-Zero + zero head


def test_gradients_reach_every_parameter_after_warm_start():
  m = small_dit()
  x, t, y = inputs()
  params = nn.meta.unbox(m.init(jax.random.key(0), x, t, y))
  # leave the adaLN-Zero start: perturb every parameter so zero-initialised gates open.
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree_util.tree_unflatten(
      treedef, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  grads = jax.grad(lambda p: jnp.sum(m.apply(p, x, t, y) ** 2))(params)
  # y_embed rows of classes absent from y get no gradient by construction; check the used rows.
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  for path, g in flat:
    name = jax.tree_util.keystr(path)
    if "y_embed" in name:
      assert np.all(np.abs(np.asarray(g)[np.asarray(y)]).sum(-1) > 0)
    else:
      assert float(jnp.abs(g).max()) > 0, name


def test_remat_same_params_outputs_and_gradients():
  """model.remat recomputes block activations in the backward: same parameter tree, outputs and
  gradients as the plain DiT (its memory saving is measured in experiments/results/vs_torch.md)."""
  x, t, y = inputs(b=8)
  plain, remat = small_dit(depth=3), small_dit(depth=3, remat=True)
  params = nn.meta.unbox(plain.init(jax.random.key(0), x, t, y))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree_util.tree_unflatten(treedef, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  assert (jax.tree_util.tree_structure(nn.meta.unbox(remat.init(jax.random.key(0), x, t, y)))
          == jax.tree_util.tree_structure(params))
  np.testing.assert_allclose(remat.apply(params, x, t, y), plain.apply(params, x, t, y), atol=1e-6)
  grad = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(m.apply(p, x, t, y) ** 2)))
  for a, b in zip(jax.tree_util.tree_leaves(grad(remat)(params)), jax.tree_util.tree_leaves(grad(plain)(params))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  assert dit_from_config(_remat_model_config(), (16, 16, 3), 5).remat == "full"


def _remat_model_config():
  from adaflow.config_defaults import base_config
  c = base_config().model
  c.remat = "full"
  return c


def test_blockspec_pruned_structure_and_removed_branch():
  m = small_dit(blocks=(BlockSpec(1, 16), BlockSpec(0, 8)))
  x, t, y = inputs()
  params = nn.meta.unbox(m.init(jax.random.key(0), x, t, y))
  p = params["params"]
  assert p["block_0"]["attn"]["qkv"]["kernel"].shape == (32, 3 * 16)
  assert "attn" not in p["block_1"]
  assert p["block_1"]["mlp"]["fc1"]["kernel"].shape == (32, 8)
  chex.assert_shape(m.apply(params, x, t, y), x.shape)


def test_space_to_depth_round_trip_and_patches():
  x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
  for gh, gw in [(1, 1), (2, 2), (1, 2), (2, 1)]:
    z = patchify.space_to_depth(x, gh, gw)
    chex.assert_shape(z, (2, 8 // gh, 12 // gw, gh * gw * 3))
    np.testing.assert_array_equal(patchify.depth_to_space(z, gh, gw), x)
  p = patchify.patches(x, 2)
  chex.assert_shape(p, (2, 4 * 6, 12))
  np.testing.assert_array_equal(patchify.unpatches(p, 2, 4, 6), x)


def test_position_embedding_matches_reference_layout():
  pe = sincos_2d(8, np.arange(2), np.arange(3))
  assert pe.shape == (6, 8)
  # token (row 1, col 2): first half encodes the column (w), second half the row (h)
  np.testing.assert_allclose(pe[5, 0], np.sin(2.0), rtol=1e-6)
  np.testing.assert_allclose(pe[5, 4], np.sin(1.0), rtol=1e-6)


def test_timestep_embedding_freq_shift():
  e0 = timestep_embedding(jnp.array([3.0]), 8)
  e1 = timestep_embedding(jnp.array([3.0]), 8, freq_shift=1.0)
  np.testing.assert_allclose(e0[0, 0], np.cos(3.0), rtol=1e-6)
  np.testing.assert_allclose(e0[0, 1], np.cos(3.0 * 10000 ** (-1 / 4)), rtol=1e-5)
  np.testing.assert_allclose(e1[0, 1], np.cos(3.0 * 10000 ** (-1 / 3)), rtol=1e-5)


def test_sizes_from_config():
  from adaflow.config_defaults import base_config
  c = base_config()
  c.model.size = "S"
  m = dit_from_config(c.model, (32, 32, 3), 10)
  assert (m.depth, m.hidden_size, m.num_heads) == DIT_SIZES["S"]


def test_bf16_close_to_f32():
  x, t, y = inputs()
  m32, m16 = small_dit(), small_dit(dtype=jnp.bfloat16)
  params = nn.meta.unbox(m32.init(jax.random.key(0), x, t, y))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree_util.tree_unflatten(treedef, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  a, b = m32.apply(params, x, t, y), m16.apply(params, x, t, y)
  rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
  assert rel < 0.05, rel


def _perturbed_params(m, x, t, y):
  params = nn.meta.unbox(m.init(jax.random.key(0), x, t, y))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  return jax.tree_util.tree_unflatten(treedef, [l + 0.05 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


@pytest.mark.parametrize("remat", [False, "full", "save_dots", "dots_no_batch"])
def test_scan_blocks_same_tree_outputs_and_gradients_as_the_loop(remat):
  """scan_blocks stacks the per-block params inside the step: the stored tree keeps block_i names
  (checkpoints, converter, pruning unchanged) and outputs/gradients equal the unrolled loop."""
  x, t, y = inputs(b=4)
  loop, scan = small_dit(depth=3, scan_blocks=False), small_dit(depth=3, scan_blocks=True, remat=remat)
  params = _perturbed_params(loop, x, t, y)
  assert (jax.tree_util.tree_structure(nn.meta.unbox(scan.init(jax.random.key(0), x, t, y)))
          == jax.tree_util.tree_structure(params))
  assert "block_2" in params["params"]
  jaxpr = str(jax.make_jaxpr(lambda p: scan.apply(p, x, t, y))(params))
  assert "scan" in jaxpr and "scan" not in str(jax.make_jaxpr(lambda p: loop.apply(p, x, t, y))(params))
  np.testing.assert_allclose(scan.apply(params, x, t, y), loop.apply(params, x, t, y), atol=1e-5)
  grad = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(m.apply(p, x, t, y) ** 2)))
  for a, b in zip(jax.tree_util.tree_leaves(grad(scan)(params)), jax.tree_util.tree_leaves(grad(loop)(params))):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_uneven_blocks_keep_the_loop_and_bad_remat_names_fail():
  x, t, y = inputs()
  m = small_dit(blocks=(BlockSpec(1, 16), BlockSpec(2, 8)), scan_blocks=True)
  params = nn.meta.unbox(m.init(jax.random.key(0), x, t, y))
  assert "scan" not in str(jax.make_jaxpr(lambda p: m.apply(p, x, t, y))(params))
  with pytest.raises(ValueError, match=r"model\.remat"):
    small_dit(remat="everything").init(jax.random.key(0), x, t, y)
  from adaflow.parallel.remat import remat_policy
  assert remat_policy("none") is None and remat_policy(False) is None
  assert remat_policy("True") is remat_policy(True) is remat_policy("full")
