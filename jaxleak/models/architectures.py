"""Flax Linen architectures used across the gradient-leakage literature.

All modules take NHWC float images in [0, 1] (no normalisation inside the
model) and return logits of shape [B, num_classes]. Every ``__call__`` accepts
``train``: it only matters for BatchNorm, where ``train=True`` normalises with
the statistics of the current batch (and, when ``batch_stats`` is mutable,
updates the running averages) and ``train=False`` uses the stored averages.

Every module has `kernel_init` and `bias_init` fields applied to all of its
Conv and Dense layers (normalisation layers keep scale 1 and bias 0).
`jaxleak.models.create` builds the variables with zero initialisers and then
draws all kernels at once with `reinit`, which compiles much faster on CPU than
one random draw per layer; the module defaults below are the same
distributions, used when a module is initialised directly.

Layer names are explicit (``conv0``, ``norm0``, ``head``...) so that code
outside the module, e.g. tests or attacks that target the first layer, can
address parameters by a stable path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# Activations selectable by name. Strings (not callables) are stored on the
# modules so that modules stay hashable and printable.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "softplus": nn.softplus,
    "gelu": nn.gelu,
}

NORMS = ("none", "group", "batch")


def uniform_init(low: float = -0.5, high: float = 0.5) -> Callable[..., Array]:
  """U(low, high) initialiser, usable for kernels and biases alike."""

  def init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    return jax.random.uniform(key, shape, dtype, minval=low, maxval=high)

  return init


Initializer = Callable[..., Array]
DEFAULT_KERNEL_INIT: Initializer = nn.initializers.lecun_normal()
DEFAULT_BIAS_INIT: Initializer = nn.initializers.zeros_init()


def group_count(channels: int, max_groups: int = 32) -> int:
  """Number of GroupNorm groups for `channels`: gcd(32, channels).

  This equals min(32, channels) for the power-of-two widths used here, and
  always divides `channels`, so any width multiplier is valid.
  """
  return math.gcd(max_groups, channels)


def _norm_layer(norm: str, channels: int, train: bool, name: str) -> nn.Module | None:
  if norm == "none":
    return None
  if norm == "group":
    return nn.GroupNorm(num_groups=group_count(channels), name=name)
  # PyTorch-equivalent BN hyper-parameters (torch momentum 0.1 == flax 0.9), as
  # the reference implementations of these models are PyTorch.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      name=name)


def max_pool(x: Array, window: tuple[int, int], strides: tuple[int, int]) -> Array:
  """'VALID' max pooling over NHWC as an elementwise max of strided slices.

  Same values as ``flax.linen.max_pool``. Its gradient is a chain of selects
  that XLA fuses, where ``reduce_window``'s is a ``select_and_scatter``,
  which dominated the backward pass of the benchmark CNNs on XLA:CPU (cnn_mnist
  DP step 1.6x faster). At exact ties the gradient is split between the tied
  inputs instead of going to one of them; both are valid subgradients.
  """
  (kh, kw), (sh, sw) = window, strides
  ho = (x.shape[-3] - kh) // sh + 1
  wo = (x.shape[-2] - kw) // sw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = x[..., i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
      out = tap if out is None else jnp.maximum(out, tap)
  return out


def _flatten(x: Array) -> Array:
  return x.reshape((x.shape[0], -1))


class LeNet(nn.Module):
  """The sigmoid LeNet of DLG (Zhu et al., 2019), also used by I²F.

  Three 5x5 convolutions with 12 channels and strides 2, 2, 1, each followed by
  the activation, then flatten and one Dense layer. Padding is the reference's
  symmetric 2 pixels, which gives the same output size as 'SAME' (ceil(H / s))
  but the same alignment as the PyTorch original for even sizes.
  Default initialisation is U(-0.5, 0.5) on weights and biases, as in DLG.
  """

  num_classes: int
  act: str = "sigmoid"
  kernel_init: Initializer = uniform_init(-0.5, 0.5)
  bias_init: Initializer = uniform_init(-0.5, 0.5)

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train  # No batch-dependent layers.
    act = ACTIVATIONS[self.act]
    inits = dict(kernel_init=self.kernel_init, bias_init=self.bias_init)
    for i, stride in enumerate((2, 2, 1)):
      x = nn.Conv(12, (5, 5), strides=stride, padding=((2, 2), (2, 2)),
                  name=f"conv{i}", **inits)(x)
      x = act(x)
    x = _flatten(x)
    return nn.Dense(self.num_classes, name="head", **inits)(x)


class ConvNet(nn.Module):
  """The 8-layer "ConvNet" of Geiping et al. (2020), resolution-agnostic.

  Channels [w, 2w, 2w, 4w, 4w, 4w, 4w, 4w] with 3x3 kernels. The original's
  three 3x3 max-pools (after conv3, conv5 and conv7) are replaced by stride 2
  in conv3 and conv5 and a global average pool after conv7, so the network
  works for any input from 8x8 upwards with the same parameters.
  """

  num_classes: int
  width: int = 32
  norm: str = "none"
  act: str = "relu"
  kernel_init: Initializer = DEFAULT_KERNEL_INIT
  bias_init: Initializer = DEFAULT_BIAS_INIT

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    act = ACTIVATIONS[self.act]
    inits = dict(kernel_init=self.kernel_init, bias_init=self.bias_init)
    w = self.width
    channels = (w, 2 * w, 2 * w, 4 * w, 4 * w, 4 * w, 4 * w, 4 * w)
    strides = (1, 1, 1, 2, 1, 2, 1, 1)
    for i, (c, s) in enumerate(zip(channels, strides)):
      x = nn.Conv(c, (3, 3), strides=s, padding="SAME", name=f"conv{i}",
                  **inits)(x)
      norm = _norm_layer(self.norm, c, train, name=f"norm{i}")
      if norm is not None:
        x = norm(x)
      x = act(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head", **inits)(x)


class MLP(nn.Module):
  """Flatten, then Dense layers of sizes `hidden` with `act`, then a Dense head."""

  num_classes: int
  hidden: tuple[int, ...] = (512, 512)
  act: str = "sigmoid"
  kernel_init: Initializer = DEFAULT_KERNEL_INIT
  bias_init: Initializer = DEFAULT_BIAS_INIT

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    act = ACTIVATIONS[self.act]
    inits = dict(kernel_init=self.kernel_init, bias_init=self.bias_init)
    x = _flatten(x)
    for i, h in enumerate(self.hidden):
      x = act(nn.Dense(h, name=f"dense{i}", **inits)(x))
    return nn.Dense(self.num_classes, name="head", **inits)(x)


class CNNMnist(nn.Module):
  """The tanh MNIST CNN of DP-SGD benchmarks (Papernot et al., 2021).

  Conv(16, 8x8, s2, SAME) - act - MaxPool(2, s1) - Conv(32, 4x4, s2, VALID) -
  act - MaxPool(2, s1) - flatten - Dense(32) - act - Dense(num_classes).
  26,010 parameters on 28x28x1 with 10 classes. On inputs too small for the
  VALID 4x4 convolution (e.g. 8x8 digits) that convolution pads SAME.
  """

  num_classes: int
  act: str = "tanh"
  kernel_init: Initializer = DEFAULT_KERNEL_INIT
  bias_init: Initializer = DEFAULT_BIAS_INIT

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    act = ACTIVATIONS[self.act]
    inits = dict(kernel_init=self.kernel_init, bias_init=self.bias_init)
    x = nn.Conv(16, (8, 8), strides=2, padding="SAME", name="conv0", **inits)(x)
    x = max_pool(act(x), (2, 2), (1, 1))
    # Inputs below ~11x11 (sklearn digits are 8x8) leave a map smaller than
    # the 4x4 kernel here; pad SAME then so the network still applies.
    pad = "VALID" if min(x.shape[-3:-1]) >= 4 else "SAME"
    x = nn.Conv(32, (4, 4), strides=2, padding=pad, name="conv1", **inits)(x)
    x = max_pool(act(x), (2, 2), (1, 1))
    x = _flatten(x)
    x = act(nn.Dense(32, name="dense0", **inits)(x))
    return nn.Dense(self.num_classes, name="head", **inits)(x)


class CNNCifar(nn.Module):
  """The tanh CIFAR-10 CNN of DP-SGD benchmarks (Papernot et al.; Tramèr & Boneh).

  [Conv(32)x2, pool, Conv(64)x2, pool, Conv(128)x2, pool] with 3x3 'SAME'
  convolutions and 2x2 stride-2 pooling, then Dense(128) - act -
  Dense(num_classes). 550,570 parameters on 32x32x3 with 10 classes.
  """

  num_classes: int
  act: str = "tanh"
  pool: str = "max"
  kernel_init: Initializer = DEFAULT_KERNEL_INIT
  bias_init: Initializer = DEFAULT_BIAS_INIT

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    del train
    act = ACTIVATIONS[self.act]
    inits = dict(kernel_init=self.kernel_init, bias_init=self.bias_init)
    if self.pool == "max":
      pool = lambda h: max_pool(h, (2, 2), (2, 2))
    else:
      pool = lambda h: nn.avg_pool(h, (2, 2), strides=(2, 2), padding="VALID")
    i = 0
    for c in (32, 64, 128):
      for _ in range(2):
        x = act(nn.Conv(c, (3, 3), padding="SAME", name=f"conv{i}", **inits)(x))
        i += 1
      x = pool(x)
    x = _flatten(x)
    x = act(nn.Dense(128, name="dense0", **inits)(x))
    return nn.Dense(self.num_classes, name="head", **inits)(x)


class BasicBlock(nn.Module):
  """ResNet basic block: two 3x3 convs with a (projected) identity shortcut."""

  features: int
  strides: int = 1
  norm: str = "group"
  kernel_init: Initializer = DEFAULT_KERNEL_INIT

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    y = nn.Conv(self.features, (3, 3), strides=self.strides, padding="SAME",
                use_bias=False, kernel_init=self.kernel_init, name="conv0")(x)
    y = nn.relu(_norm_layer(self.norm, self.features, train, "norm0")(y))
    y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False,
                kernel_init=self.kernel_init, name="conv1")(y)
    y = _norm_layer(self.norm, self.features, train, "norm1")(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False,
                  kernel_init=self.kernel_init, name="shortcut_conv")(x)
      x = _norm_layer(self.norm, self.features, train, "shortcut_norm")(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """CIFAR-style ResNet-18 (He et al., 2016; as in Geiping et al., 2020).

  3x3 stride-1 stem without max-pool, four stages of two BasicBlocks with
  widths [w, 2w, 4w, 8w] (w = `width`, 64 by default) and strides [1, 2, 2, 2],
  global average pooling, Dense head. GroupNorm (default) keeps per-example
  gradients valid; `norm="batch"` gives the usual BatchNorm network.
  """

  num_classes: int
  width: int = 64
  norm: str = "group"
  kernel_init: Initializer = DEFAULT_KERNEL_INIT
  bias_init: Initializer = DEFAULT_BIAS_INIT

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    w = self.width
    x = nn.Conv(w, (3, 3), padding="SAME", use_bias=False,
                kernel_init=self.kernel_init, name="stem_conv")(x)
    x = nn.relu(_norm_layer(self.norm, w, train, "stem_norm")(x))
    for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2))):
      for block in range(2):
        x = BasicBlock(w * mult, strides=stride if block == 0 else 1,
                       norm=self.norm, kernel_init=self.kernel_init,
                       name=f"stage{stage}_block{block}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head", kernel_init=self.kernel_init,
                    bias_init=self.bias_init)(x)
