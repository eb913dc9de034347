"""Flax convolutions whose kernel derivative is a matrix product.

XLA:CPU lowers the kernel gradient of an NHWC convolution to another
convolution with the batch and image as the contraction dimensions (the output
gradient acts as a huge "kernel"), which is many times slower than the forward
pass: measured on 2 cores for jaxleak's ConvNet at 32x32, the parameter
gradient took 13x its batch-1 time at batch 8, the second-order inversion step
11x. Gradient inversion differentiates that kernel gradient again w.r.t. the
images, so it pays twice.

`conv2d` computes the same forward convolution but is a ``jax.custom_jvp``
whose tangent in the kernel is written with explicit patches,

    ∂y = conv(∂x, W) + P(x) · vec(∂W),

where ``P(x)`` is the ``[B·H'·W', kh·kw·C]`` im2col matrix of the (padded,
strided) input. Reverse mode transposes the second term into the matrix
product ``P(x)^T ∂y`` (fast on every backend), and a derivative of that
w.r.t. the images differentiates ``P`` (pads and strided slices) and matrix
products only. The input tangent stays XLA's own convolution, whose
transposes are convolutions with the fixed kernel (fast). Zero tangents are
symbolic, so the unused half of the rule costs nothing. Numbers agree with
``lax.conv_general_dilated`` up to float rounding (tested).

`intercept()` routes every plain 2-D ``flax.linen.Conv`` call inside the
``with`` block through `conv2d` (strides and any padding except the circular,
reflect and causal modes; other convolutions fall through unchanged).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from jaxleak._src import conv_geometry

__all__ = ("conv2d", "patches", "intercept")

_DIMS = conv_geometry.DIMENSION_NUMBERS
Pads = conv_geometry.Pads


def patches(x: jax.Array, kernel_hw: tuple[int, int],
            strides: tuple[int, int], pads: Pads) -> jax.Array:
  """im2col: ``[B, H', W', kh·kw·C]``, taps in (i, j, c) order (HWIO's)."""
  kh, kw = kernel_hw
  sh, sw = strides
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  b, hp, wp, c = xp.shape
  ho = (hp - kh) // sh + 1
  wo = (wp - kw) // sw + 1
  taps = [lax.slice(xp, (0, i, j, 0),
                    (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  return jnp.concatenate(taps, axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           pads: Pads) -> jax.Array:
  """``lax.conv_general_dilated(x, kernel, strides, pads)`` in NHWC/HWIO.

  Args:
    x: ``[B, H, W, C]``.
    kernel: ``[kh, kw, C, O]``.
    strides: ``(sh, sw)``.
    pads: ``((top, bottom), (left, right))``.

  Returns:
    ``[B, H', W', O]``.
  """
  return lax.conv_general_dilated(x, kernel, strides, pads,
                                  dimension_numbers=_DIMS)


def _conv2d_jvp(strides, pads, primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  y = conv2d(x, kernel, strides, pads)
  zero = jax.custom_derivatives.SymbolicZero
  dy = None
  if not isinstance(dx, zero):
    dy = conv2d(dx, kernel, strides, pads)
  if not isinstance(dkernel, zero):
    kh, kw, c, o = kernel.shape
    term = patches(x, (kh, kw), strides, pads) @ dkernel.reshape(kh * kw * c,
                                                                 o)
    dy = term if dy is None else dy + term
  if dy is None:
    dy = jnp.zeros_like(y)
  return y, dy


conv2d.defjvp(_conv2d_jvp, symbolic_zeros=True)


def _interceptor(next_fun, args, kwargs, context):
  module = context.module
  if (context.method_name != "__call__" or not isinstance(module, nn.Conv)
      or kwargs or len(args) != 1):
    return next_fun(*args, **kwargs)
  x = args[0]
  geometry = conv_geometry.conv_geometry(module, x)
  if geometry is None:
    return next_fun(*args, **kwargs)
  strides, pads = geometry.strides, geometry.pads
  params = module.variables.get("params", {})
  if "kernel" not in params:  # e.g. during initialisation.
    return next_fun(*args, **kwargs)
  kernel = params["kernel"]
  y = conv2d(x.astype(kernel.dtype), kernel, strides, pads)
  if module.use_bias:
    y = y + params["bias"]
  return y


@contextlib.contextmanager
def intercept() -> Iterator[None]:
  """Routes plain 2-D ``nn.Conv`` calls in this block through `conv2d`.

  Takes effect while tracing: wrap the traced computation (inside ``jax.jit``
  or ``jax.grad``), not the call of a compiled function.
  """
  with nn.intercept_methods(_interceptor):
    yield
