"""Geometry of a plain 2-D ``flax.linen.Conv`` call, for code that re-derives it.

Shared by the matmul convolution of the inversion attacks and the layerwise
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
