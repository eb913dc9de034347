"""The matmul-kernel-derivative convolution against XLA's, to second order."""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak._src import matmul_conv

_DN = ("NHWC", "HWIO", "NHWC")
_GEOMETRIES = (((1, 1), ((1, 1), (1, 1))), ((2, 2), "SAME"),
               ((1, 2), ((2, 2), (1, 0))))


def _derivatives(conv, x, w):
  """Value, both first derivatives, the inversion-style second, and a jvp."""
  loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
  # Gradient inversion's shape: d/dx of a function of the kernel gradient.
  second = jax.grad(lambda x: jnp.sum(jax.grad(loss, 1)(x, w) ** 2))(x)
  return (loss(x, w), *jax.grad(loss, (0, 1))(x, w), second,
          jax.jvp(loss, (x, w), (x, w))[1])


@pytest.mark.parametrize("kernel_tangent", matmul_conv.KERNEL_TANGENTS)
def test_values_first_and_second_order_match_lax(kernel_tangent):
  x = jax.random.normal(jax.random.key(0), (2, 7, 8, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  for strides, padding in _GEOMETRIES:
    ref = jax.jit(lambda x, w: _derivatives(
        lambda x, w: jax.lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=_DN), x, w))
    new = jax.jit(lambda x, w: _derivatives(
        lambda x, w: matmul_conv.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=_DN,
            kernel_tangent=kernel_tangent), x, w))
    for a, b in zip(ref(x, w), new(x, w)):
      scale = float(jnp.abs(a).max())
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale)


def test_patches_times_kernel_is_the_convolution():
  x = jax.random.normal(jax.random.key(0), (1, 5, 6, 2))
  w = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
  pads = ((0, 1), (2, 0))
  ref = jax.lax.conv_general_dilated(x, w, (2, 1), pads, dimension_numbers=_DN)
  p = matmul_conv.patches(x, (3, 3), (2, 1), pads)
  np.testing.assert_allclose(p @ w.reshape(-1, 4), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(matmul_conv.conv2d(x, w, (2, 1), pads), ref,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel_tangent", matmul_conv.KERNEL_TANGENTS)
def test_intercept_routes_flax_conv_and_changes_no_numbers(kernel_tangent,
                                                           monkeypatch):
  model = nn.Sequential([nn.Conv(4, (3, 3), strides=2), jnp.tanh,
                         nn.Conv(2, (2, 2), padding="VALID")])
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  params = model.init(jax.random.key(1), x)

  def loss(p, x, fast):
    with (matmul_conv.intercept(kernel_tangent) if fast
          else contextlib.nullcontext()):
      return jnp.sum(model.apply(p, x) ** 2)

  calls = []
  original = matmul_conv.conv2d
  with monkeypatch.context() as m:
    m.setattr(matmul_conv, "conv2d",
              lambda *a: calls.append(a[-1]) or original(*a))
    jax.eval_shape(functools.partial(loss, fast=True), params, x)
  assert calls == [kernel_tangent] * 2  # Both convolutions took the fast path.
  grad = jax.jit(jax.grad(loss), static_argnums=2)
  for a, b in zip(jax.tree.leaves(grad(params, x, False)),
                  jax.tree.leaves(grad(params, x, True))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="'kernel_tangent'"), \
      matmul_conv.intercept("fft"):
    pass
