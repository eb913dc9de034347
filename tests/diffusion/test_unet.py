"""The pure UNet apply function: shapes, conditioning, autodiff, checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import diffusion
from jaxleak._src import matmul_conv


def _inputs(tiny, b=2, seed=0):
  r = tiny.spec.resolution
  x = jax.random.normal(jax.random.key(seed), (b, r, r, tiny.spec.channels))
  t = jnp.array([10, 700][:b] + [500] * max(b - 2, 0))
  return x, t, jnp.arange(b) % tiny.spec.num_classes


def test_apply_is_nhwc_and_uses_the_label(tiny, fast_jit):
  x, t, y = _inputs(tiny)
  f = fast_jit(tiny.apply_fn)
  eps = f(tiny.params, x, t, y)
  assert eps.shape == x.shape and eps.dtype == jnp.float32
  other = f(tiny.params, x, t, (y + 1) % tiny.spec.num_classes)
  assert float(jnp.abs(eps - other).max()) > 1e-4  # the label matters
  null = f(tiny.params, x, t, jnp.full((2,), tiny.spec.null_class))
  np.testing.assert_allclose(f(tiny.params, x, t, None), null, atol=1e-6)


def test_grad_of_x0_hat_wrt_x_t_is_finite_jittable_and_checkpointable(tiny, fast_jit):
  x, t, y = _inputs(tiny)

  def objective(x_t, remat=False):
    apply_fn = jax.checkpoint(tiny.apply_fn) if remat else tiny.apply_fn
    eps = apply_fn(tiny.params, x_t, t, y)
    x0 = diffusion.x0_hat(tiny.schedule, x_t, t, eps)
    return jnp.sum(jnp.sin(x0))

  value, g_jit = fast_jit(jax.value_and_grad(objective))(x)
  assert g_jit.shape == x.shape
  assert bool(jnp.all(jnp.isfinite(g_jit)))
  assert float(jnp.abs(g_jit).max()) > 1e-3
  # jax.checkpoint (rematerialisation) changes nothing but memory.
  value_r, g_remat = fast_jit(jax.value_and_grad(
      lambda x: objective(x, remat=True)))(x)
  assert float(value_r) == pytest.approx(float(value), rel=1e-5)
  np.testing.assert_allclose(g_remat, g_jit, atol=1e-4)
  # One directional derivative against central finite differences.
  v = jax.random.normal(jax.random.key(5), x.shape)
  v = v / jnp.linalg.norm(v)
  h = 2e-2
  f = fast_jit(objective)
  fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
  assert float(jnp.vdot(g_jit, v)) == pytest.approx(float(fd), rel=1e-2)


def test_grad_wrt_params_is_finite_and_reaches_every_block(tiny, fast_jit):
  x, t, y = _inputs(tiny)
  loss = lambda p: jnp.mean(tiny.apply_fn(p, x, t, y) ** 2)
  grads = fast_jit(jax.grad(loss))(tiny.params)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  for block in ("conv_in", "down_blocks_0", "mid_block", "up_blocks_1",
                "conv_out"):
    norm = optax_norm(grads["unet"][block])
    assert norm > 0, block
  # Only the rows of the labels in the batch get a gradient.
  table_grad = np.asarray(grads["class_embedding"])
  assert np.abs(table_grad[:2]).sum() > 0
  assert np.abs(table_grad[2:]).sum() == 0


def optax_norm(tree):
  return float(jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(tree))))


def test_fast_conv_matches_lax_conv_values_and_grads():
  dn = ("NHWC", "HWIO", "NHWC")
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  for strides, pad in (((1, 1), ((1, 1), (1, 1))), ((2, 2), "SAME"),
                       ((1, 1), "VALID")):
    ref = lambda x, w: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
        x, w, strides, pad, dimension_numbers=dn)))
    new = lambda x, w: jnp.sum(jnp.sin(matmul_conv.conv_general_dilated(
        x, w, strides, pad, dimension_numbers=dn, kernel_tangent="per_tap")))
    assert float(new(x, w)) == pytest.approx(float(ref(x, w)), rel=1e-5)
    for a, b in zip(jax.grad(ref, (0, 1))(x, w), jax.grad(new, (0, 1))(x, w)):
      np.testing.assert_allclose(a, b, atol=1e-4)
    # Forward mode works too (custom_jvp).
    t_ref = jax.jvp(ref, (x, w), (x, w))[1]
    t_new = jax.jvp(new, (x, w), (x, w))[1]
    assert float(t_new) == pytest.approx(float(t_ref), rel=1e-4)


def test_spec_validation_names_the_argument():
  with pytest.raises(ValueError, match="'resolution'"):
    diffusion.UNetSpec(resolution=8)
  with pytest.raises(ValueError, match="'resolution'"):
    diffusion.UNetSpec(resolution=1024)
  with pytest.raises(ValueError, match="'resolution'"):
    diffusion.UNetSpec(resolution=18, block_out_channels=(32, 32, 32))
  with pytest.raises(ValueError, match="'block_out_channels'"):
    diffusion.UNetSpec(block_out_channels=(16, 32))
  with pytest.raises(ValueError, match="'attention'"):
    diffusion.UNetSpec(block_out_channels=(32, 32), attention=(True,))
  spec = diffusion.UNetSpec(resolution=16, block_out_channels=(32, 32))
  assert spec.attention == (False, False) and not spec.mid_attention
  assert diffusion.UNetSpec.from_dict(spec.to_dict()) == spec
  with pytest.raises(ValueError, match="'cond'"):
    diffusion.make_unet_apply(spec)(None, jnp.zeros((1, 16, 16, 1)), 0,
                                    jnp.zeros((1,), jnp.int32))


def test_model_space_round_trip():
  img = jnp.linspace(0, 1, 11).reshape(1, 11, 1, 1)
  x = diffusion.to_model_space(img)
  assert float(x.min()) == -1.0 and float(x.max()) == 1.0
  np.testing.assert_allclose(diffusion.to_image_space(x), img, atol=1e-7)
  assert float(diffusion.to_image_space(jnp.array(3.0))) == 1.0


def test_diffusers_deprecation_log_is_silenced_only_inside_jaxleak(tiny, capfd):
  import diffusers.utils.logging as dlog  # pylint: disable=g-import-not-at-top
  before = dlog.get_verbosity()
  x, t, y = _inputs(tiny, b=1)
  tiny.apply_fn(tiny.params, x, t, y)  # Eager: runs every module's setup.
  assert "deprecated" not in capfd.readouterr().err
  assert dlog.get_verbosity() == before
