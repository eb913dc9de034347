"""Geometry of a plain 2-D ``flax.linen.Conv`` call, for code that re-derives it.

Shared by the matmul-kernel convolution (`jaxleak._src.matmul_conv`) and the layerwise
per-example gradients of `jaxleak.dp`: both rewrite a convolution as taps
(strided slices of the padded input), which needs explicit padding and
strides and rules out grouped, dilated, masked or circular convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
from jax import lax

Pads = tuple[tuple[int, int], tuple[int, int]]
# Flax's layouts, as ``lax.conv_general_dilated`` dimension numbers.
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


class ConvGeometry(NamedTuple):
  kernel_hw: tuple[int, int]
  strides: tuple[int, int]
  pads: Pads


def explicit_pads(padding, in_hw: Sequence[int], kernel_hw: Sequence[int],
                  strides: Sequence[int]) -> Pads | None:
  """Flax ``padding`` as ``((top, bottom), (left, right))``; None if unsupported."""
  if isinstance(padding, str):
    if padding.upper() not in ("SAME", "VALID"):
      return None  # CIRCULAR / REFLECT / CAUSAL.
    return tuple(tuple(p) for p in lax.padtype_to_pads(
        in_hw, kernel_hw, strides, padding.upper()))
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  pads = tuple(padding)
  if len(pads) != 2:
    return None
  return tuple((p, p) if isinstance(p, int) else tuple(p) for p in pads)


def conv_geometry(module: nn.Module, x: jax.Array) -> ConvGeometry | None:
  """Kernel size, strides and pads of ``module(x)``, or None if not plain 2-D."""
  if type(module) is not nn.Conv or x.ndim != 4:  # pylint: disable=unidiomatic-typecheck
    return None
  ks = module.kernel_size
  ks = (ks,) if isinstance(ks, int) else tuple(ks)
  ones = (None, 1, (1, 1), [1, 1])
  if (len(ks) != 2 or module.feature_group_count != 1
      or module.mask is not None or module.input_dilation not in ones
      or module.kernel_dilation not in ones
      or module.conv_general_dilated is not None
      or module.conv_general_dilated_cls is not None):
    return None
  strides = module.strides or 1
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  pads = explicit_pads(module.padding, x.shape[1:3], ks, strides)
  if pads is None:
    return None
  return ConvGeometry(tuple(ks), strides, pads)


def can_fold_strides(geometry: ConvGeometry) -> bool:
  """Whether `fold_strides` applies: some stride > 1, each dividing its kernel size."""
  (kh, kw), (sh, sw), _ = geometry
  return (sh, sw) != (1, 1) and kh % sh == 0 and kw % sw == 0


def fold_strides(x: jax.Array, kernel: jax.Array, geometry: ConvGeometry):
  """A strided convolution as a stride-1 one on space-to-depth blocks.

  With ``kh = sh·kh'`` (and likewise for widths), output row ``o`` of a
  stride-``sh`` convolution reads padded input rows ``sh·(o + a) + r`` through
  kernel row ``sh·a + r`` (``a < kh'``, ``r < sh``). Folding each ``sh x sw``
  block of the padded input into channels (order ``(r, r', c)``) and the
  kernel the same way therefore gives a VALID, stride-1 convolution with a
  ``kh' x kw'`` kernel and ``sh·sw·C`` input channels, and the same output.

  Args:
    x: ``[B, H, W, C]``.
    kernel: ``[kh, kw, C, O]``.
    geometry: the convolution's; `can_fold_strides` must hold.

  Returns:
    ``(folded_x, folded_kernel, folded_geometry)``.
  """
  (kh, kw), (sh, sw), pads = geometry
  b, h, w, c = x.shape
  ho = (h + pads[0][0] + pads[0][1] - kh) // sh + 1
  wo = (w + pads[1][0] + pads[1][1] - kw) // sw + 1
  kh2, kw2 = kh // sh, kw // sw
  # The padded extent the folded convolution reads (may differ from the
  # original's by the rows a strided window never reaches).
  need_h, need_w = sh * (ho + kh2 - 1), sw * (wo + kw2 - 1)
  xp = jax.numpy.pad(x, ((0, 0),
                         (pads[0][0], max(0, need_h - h - pads[0][0])),
                         (pads[1][0], max(0, need_w - w - pads[1][0])),
                         (0, 0)))[:, :need_h, :need_w]
  folded_x = xp.reshape(b, need_h // sh, sh, need_w // sw, sw, c).transpose(
      0, 1, 3, 2, 4, 5).reshape(b, need_h // sh, need_w // sw, sh * sw * c)
  o = kernel.shape[-1]
  folded_kernel = kernel.reshape(kh2, sh, kw2, sw, c, o).transpose(
      0, 2, 1, 3, 4, 5).reshape(kh2, kw2, sh * sw * c, o)
  return folded_x, folded_kernel, ConvGeometry((kh2, kw2), (1, 1),
                                               ((0, 0), (0, 0)))


def unfold_kernel(folded: jax.Array, strides: tuple[int, int]) -> jax.Array:
  """Inverse of `fold_strides` on kernels: ``[..., kh', kw', sh·sw·C, O]`` -> ``[..., kh, kw, C, O]``."""
  sh, sw = strides
  *lead, kh2, kw2, ssc, o = folded.shape
  c = ssc // (sh * sw)
  n = len(lead)
  perm = tuple(range(n)) + tuple(n + i for i in (0, 2, 1, 3, 4, 5))
  return folded.reshape(*lead, kh2, kw2, sh, sw, c, o).transpose(perm).reshape(
      *lead, kh2 * sh, kw2 * sw, c, o)
