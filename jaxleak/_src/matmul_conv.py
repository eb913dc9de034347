"""2-D convolutions whose kernel derivative is a matrix product.

XLA:CPU lowers the kernel gradient of an NHWC convolution to another
convolution with the batch and image as the contraction dimensions (the output
gradient acts as a huge "kernel"), which is many times slower than the forward
pass: on 2 cores, 33 ms forward vs 670 ms kernel gradient for a 3x3, 32->32
channel conv at B=64, 32x32 (the UNet's parameter gradient was 14x its forward
pass); for the inversion ConvNet at 32x32 the parameter gradient took 13x its
batch-1 time at batch 8, the second-order inversion step 11x. Gradient
inversion differentiates that kernel gradient again w.r.t. the images, so it
pays twice.

`conv2d` computes the same forward convolution but is a ``jax.custom_jvp``
whose tangent in the kernel is written with explicit input windows,

    ∂y = conv(∂x, W) + P(x) · vec(∂W),

where ``P(x)`` is the ``[B·H'·W', kh·kw·C]`` im2col matrix of the (padded,
strided) input. Reverse mode transposes the second term into matrix products
with ``∂y`` (fast on every backend), and a derivative of that w.r.t. the
images differentiates pads, strided slices and matrix products only. The
input tangent stays a convolution with the fixed kernel (fast). Zero tangents
are symbolic, so the unused half of the rule costs nothing.

The kernel term has two equal forms (``kernel_tangent``):

* ``"im2col"``: one matrix product with the materialised ``P(x)`` (a
  ``kh·kw``-times copy of the input). One large GEMM: the faster choice for
  the second-order steps of gradient inversion, whose images are small.
* ``"per_tap"``: a sum of ``kh·kw`` products ``window_ij(x) @ ∂W[i, j]``
  without materialising ``P(x)``: no patch buffer, the choice for the
  diffusion UNet's large first-order parameter gradients.

Numbers agree with ``lax.conv_general_dilated`` up to float rounding
(tests/test_matmul_conv.py).

`intercept()` routes every plain 2-D ``flax.linen.Conv`` call inside the
``with`` block through `conv_general_dilated` (which takes the fast path for
plain NHWC/HWIO convolutions with any strides and padding, and calls
``lax.conv_general_dilated`` unchanged otherwise). It changes no parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import functools

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxleak._src import conv_geometry

__all__ = ("KERNEL_TANGENTS", "conv2d", "patches", "conv_general_dilated",
           "intercept")

KERNEL_TANGENTS = ("im2col", "per_tap")
_DIMS = conv_geometry.DIMENSION_NUMBERS
Pads = conv_geometry.Pads


def _windows(x: jax.Array, kernel_hw: tuple[int, int],
             strides: tuple[int, int], pads: Pads) -> Iterator[jax.Array]:
  """The input pixels that meet each kernel tap, ``[B, H', W', C]``, (i, j) order."""
  kh, kw = kernel_hw
  sh, sw = strides
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  b, hp, wp, c = xp.shape
  ho = (hp - kh) // sh + 1
  wo = (wp - kw) // sw + 1
  for i in range(kh):
    for j in range(kw):
      yield lax.slice(xp, (0, i, j, 0),
                      (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                      (1, sh, sw, 1))


def patches(x: jax.Array, kernel_hw: tuple[int, int],
            strides: tuple[int, int], pads: Pads) -> jax.Array:
  """im2col: ``[B, H', W', kh·kw·C]``, taps in (i, j, c) order (HWIO's)."""
  return jnp.concatenate(list(_windows(x, kernel_hw, strides, pads)), axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           pads: Pads, kernel_tangent: str = "im2col") -> jax.Array:
  """``lax.conv_general_dilated(x, kernel, strides, pads)`` in NHWC/HWIO.

  Args:
    x: ``[B, H, W, C]``.
    kernel: ``[kh, kw, C, O]``.
    strides: ``(sh, sw)``.
    pads: ``((top, bottom), (left, right))``.
    kernel_tangent: ``"im2col"`` or ``"per_tap"``, the form of the kernel
      term of the derivative (same numbers up to rounding; see the module
      docstring).

  Returns:
    ``[B, H', W', O]``.
  """
  del kernel_tangent  # Only the derivative depends on it.
  return lax.conv_general_dilated(x, kernel, strides, pads,
                                  dimension_numbers=_DIMS)


def _conv2d_jvp(strides, pads, kernel_tangent, primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  y = conv2d(x, kernel, strides, pads, kernel_tangent)
  zero = jax.custom_derivatives.SymbolicZero
  dy = None
  if not isinstance(dx, zero):
    dy = conv2d(dx, kernel, strides, pads, kernel_tangent)
  if not isinstance(dkernel, zero):
    kh, kw, c, o = kernel.shape
    if kernel_tangent == "im2col":
      terms = [patches(x, (kh, kw), strides, pads) @ dkernel.reshape(
          kh * kw * c, o)]
    else:
      terms = (jnp.einsum("bhwc,co->bhwo", win, dkernel[k // kw, k % kw])
               for k, win in enumerate(_windows(x, (kh, kw), strides, pads)))
    for term in terms:
      dy = term if dy is None else dy + term
  if dy is None:
    dy = jnp.zeros_like(y)
  return y, dy


conv2d.defjvp(_conv2d_jvp, symbolic_zeros=True)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, *,
                         kernel_tangent: str = "im2col"):
  """Drop-in `lax.conv_general_dilated` with a matmul kernel derivative.

  Only plain 2-D NHWC/HWIO convolutions (no dilation, no groups, default
  precision) take the `conv2d` path; everything else calls
  `lax.conv_general_dilated` unchanged.
  """
  plain = (
      jnp.ndim(lhs) == 4 and jnp.ndim(rhs) == 4
      and feature_group_count == 1 and batch_group_count == 1
      and all(d == 1 for d in (lhs_dilation or (1, 1)))
      and all(d == 1 for d in (rhs_dilation or (1, 1)))
      and precision is None and preferred_element_type is None
      and lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), _DIMS)
      == lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs),
                                    dimension_numbers))
  strides = tuple(int(s) for s in window_strides)
  pads = plain and conv_geometry.explicit_pads(
      padding, jnp.shape(lhs)[1:3], jnp.shape(rhs)[:2], strides)
  if not pads:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  return conv2d(lhs, rhs, strides, tuple(tuple(int(p) for p in pad)
                                         for pad in pads), kernel_tangent)


def _interceptor(kernel_tangent, next_fun, args, kwargs, context):
  module = context.module
  if (type(module) is nn.Conv and context.method_name == "__call__"  # pylint: disable=unidiomatic-typecheck
      and module.conv_general_dilated is None
      and module.conv_general_dilated_cls is None):
    # Modules are frozen dataclasses; swap the conv function for this call only.
    object.__setattr__(module, "conv_general_dilated", functools.partial(
        conv_general_dilated, kernel_tangent=kernel_tangent))
    try:
      return next_fun(*args, **kwargs)
    finally:
      object.__setattr__(module, "conv_general_dilated", None)
  return next_fun(*args, **kwargs)


@contextlib.contextmanager
def intercept(kernel_tangent: str = "im2col") -> Iterator[None]:
  """Routes ``nn.Conv`` calls in this block through `conv_general_dilated`.

  Takes effect while tracing: wrap the traced computation (inside ``jax.jit``
  or ``jax.grad``), not the call of a compiled function.

  Args:
    kernel_tangent: ``"im2col"`` or ``"per_tap"`` (see the module docstring).
  """
  if kernel_tangent not in KERNEL_TANGENTS:
    raise ValueError(f"intercept: argument 'kernel_tangent' must be one of "
                     f"{KERNEL_TANGENTS}, got {kernel_tangent!r}")
  with nn.intercept_methods(functools.partial(_interceptor, kernel_tangent)):
    yield
