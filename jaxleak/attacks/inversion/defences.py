"""Gradient defences a victim may apply before sharing: the case registry.

A defence acts at one or both of two points of the victim's computation:

* ``per_step(loss_fn, params, batch, key) -> grads`` replaces the gradient of
  each local step (DP-SGD's per-sample clipping and noise lives here);
* ``post(update, key) -> update`` transforms the update the victim finally
  shares (additive noise, pruning, quantisation).

The defaults are the plain gradient and the identity, so each defence
overrides only what it changes. `DEFENCES` maps names to factories
(``make_defence("gaussian", std=1e-3)``); `register_defence` adds new ones,
and a sequence of defences (`Compose`) applies them in order.

Noise semantics: `GaussianNoise` adds ``N(0, s^2)`` independently to every
coordinate of the shared gradient, with ``s = std`` (absolute) or
``s = std * RMS(clean update)`` (``relative=True``, the "multiples of the
gradient's RMS" of diffusion-prior papers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxleak._src import tree_util
from jaxleak._src import validate
from jaxleak._src.registry import Registry
from jaxleak.attacks.inversion import objectives

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]

__all__ = (
    "Defence",
    "NoDefence",
    "GaussianNoise",
    "LaplacianNoise",
    "DPClip",
    "TopK",
    "Quantize",
    "Compose",
    "DEFENCES",
    "register_defence",
    "make_defence",
    "available_defences",
)


@dataclasses.dataclass(frozen=True)
class Defence:
  """Base class: the undefended victim. Subclasses override one hook."""

  name = "none"

  def per_step(self, loss_fn: LossFn, params: PyTree, batch: Any,
               key: jax.Array) -> PyTree:
    """The gradient of one local step (default: ``∇_θ loss_fn(θ, batch)``)."""
    del key
    return jax.grad(loss_fn)(params, batch)

  def post(self, update: PyTree, key: jax.Array) -> PyTree:
    """Transforms the shared update (default: identity)."""
    del key
    return update

  def describe(self) -> dict[str, Any]:
    """Name and parameters, for reports."""
    return {"name": self.name,
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


@dataclasses.dataclass(frozen=True)
class NoDefence(Defence):
  """Shares the exact gradient."""

  name = "none"


def _noise_scale(update: PyTree, scale: float, relative: bool) -> jax.Array:
  if relative:
    return scale * jax.lax.stop_gradient(objectives.tree_rms(update))
  return jnp.asarray(scale, jnp.float32)


@dataclasses.dataclass(frozen=True)
class GaussianNoise(Defence):
  """Additive Gaussian noise: ``g̃ = g + N(0, s^2 I)``.

  Attributes:
    std: ``s`` (absolute), or a multiple of the clean update's RMS when
      `relative`.
    relative: scale `std` by ``RMS(g) = sqrt(||g||^2 / n)``.
  """

  std: float = 1e-3
  relative: bool = False
  name = "gaussian"

  def __post_init__(self):
    validate.check_positive(self.std, "std", fn="GaussianNoise",
                            allow_zero=True)

  def post(self, update, key):
    s = _noise_scale(update, self.std, self.relative)
    return jax.tree.map(jnp.add, update,
                        tree_util.gaussian_like(update, key, s))


@dataclasses.dataclass(frozen=True)
class LaplacianNoise(Defence):
  """Additive Laplacian noise ``Laplace(0, b)`` per coordinate (breaching LDP).

  Attributes:
    scale: ``b`` (absolute), or a multiple of the clean RMS when `relative`.
    relative: scale by the clean update's RMS.
  """

  scale: float = 1e-3
  relative: bool = False
  name = "laplacian"

  def __post_init__(self):
    validate.check_positive(self.scale, "scale", fn="LaplacianNoise",
                            allow_zero=True)

  def post(self, update, key):
    b = _noise_scale(update, self.scale, self.relative)
    leaves, treedef = jax.tree.flatten(update)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [
        x + b * jax.random.laplace(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys)])


@dataclasses.dataclass(frozen=True)
class DPClip(Defence):
  """DP-SGD's gradient: per-sample weighting (clipping) plus Gaussian noise.

  Each local step shares ``(sum_i w(||g_i||) g_i + N(0, σ² Δ² I)) / B`` with
  the weight rule ``w`` and its sensitivity ``Δ`` from `jaxleak.dp` (``clip``
  gives ``w = min(1, C / ||g_i||)``, ``Δ = C``). Per-sample gradients are
  computed one example at a time, so BatchNorm models see per-example
  statistics here (use GroupNorm or no normalisation, as for DP training).

  Attributes:
    l2_norm_clip: ``C``.
    noise_multiplier: ``σ >= 0`` (0 gives clipping only).
    rule: a name in ``jaxleak.dp.RULES`` ("clip", "auto_s", "psac", ...).
  """

  l2_norm_clip: float = 1.0
  noise_multiplier: float = 0.0
  rule: str = "clip"
  name = "dp_clip"

  def __post_init__(self):
    from jaxleak import dp  # pylint: disable=g-import-not-at-top
    validate.check_positive(self.l2_norm_clip, "l2_norm_clip", fn="DPClip")
    validate.check_positive(self.noise_multiplier, "noise_multiplier",
                            fn="DPClip", allow_zero=True)
    validate.check_choice(self.rule, "rule", tuple(dp.RULES), fn="DPClip")

  def per_step(self, loss_fn, params, batch, key):
    from jaxleak import dp  # pylint: disable=g-import-not-at-top
    rule = dp.RULES[self.rule](self.l2_norm_clip)
    summed = dp.weighted_grad_sum(loss_fn, params, batch, rule,
                                  path="vmap").grad_sum
    if self.noise_multiplier > 0:
      summed = dp.add_tree_noise(summed, key,
                                 self.noise_multiplier * rule.sensitivity)
    b = jax.tree.leaves(batch)[0].shape[0]
    return jax.tree.map(lambda g: g / b, summed)


def _keep_top_fraction(x: jax.Array, fraction: float) -> jax.Array:
  k = max(1, int(round(fraction * x.size)))
  if k >= x.size:
    return x
  flat = jnp.abs(x.reshape(-1))
  threshold = jax.lax.top_k(flat, k)[0][-1]
  return jnp.where(jnp.abs(x) >= threshold, x, 0.0)


@dataclasses.dataclass(frozen=True)
class TopK(Defence):
  """Gradient pruning: keeps the largest-magnitude `fraction` of each tensor.

  Per parameter tensor, every coordinate below the k-th largest magnitude
  (``k = round(fraction * size)``, at least 1) is set to zero, as in the
  pruning defence of DLG and I²F. Ties at the threshold are kept.

  Attributes:
    fraction: share of coordinates kept, in (0, 1].
  """

  fraction: float = 0.1
  name = "topk"

  def __post_init__(self):
    validate.check_in_range(self.fraction, "fraction", 0.0, 1.0, fn="TopK",
                            inclusive=(False, True))

  def post(self, update, key):
    del key
    return jax.tree.map(lambda x: _keep_top_fraction(x, self.fraction), update)


def _quantize(x: jax.Array, bits: int, key: jax.Array | None) -> jax.Array:
  max_abs = jnp.max(jnp.abs(x))
  if bits == 1:
    # signSGD with the mean magnitude as scale (keeps the update's size).
    return jnp.sign(x) * jnp.mean(jnp.abs(x))
  levels = 2 ** (bits - 1) - 1
  step = jnp.where(max_abs > 0, max_abs / levels, 1.0)
  y = x / step
  if key is not None:
    y = jnp.floor(y + jax.random.uniform(key, x.shape, x.dtype))
  else:
    y = jnp.round(y)
  return jnp.clip(y, -levels, levels) * step


@dataclasses.dataclass(frozen=True)
class Quantize(Defence):
  """Uniform symmetric quantisation of each tensor to `bits` bits.

  ``q(g) = step * round(g / step)`` with ``step = max|g| / (2^(bits-1) - 1)``
  per tensor (``2^bits - 1`` levels); ``bits = 1`` is signSGD scaled by the
  mean magnitude. `stochastic` rounding is unbiased (``E[q(g)] = g``).

  Attributes:
    bits: 1 to 32.
    stochastic: stochastic instead of nearest rounding.
  """

  bits: int = 8
  stochastic: bool = False
  name = "quantize"

  def __post_init__(self):
    if (not isinstance(self.bits, int) or isinstance(self.bits, bool)
        or not 1 <= self.bits <= 32):
      raise ValueError(
          "Quantize: argument 'bits' must be an int in [1, 32], got "
          f"{self.bits!r}")

  def post(self, update, key):
    leaves, treedef = jax.tree.flatten(update)
    keys = (jax.random.split(key, len(leaves)) if self.stochastic
            else [None] * len(leaves))
    return jax.tree.unflatten(
        treedef, [_quantize(x, self.bits, k) for x, k in zip(leaves, keys)])


@dataclasses.dataclass(frozen=True)
class Compose(Defence):
  """Several defences in order: at most one `per_step`, then every `post`.

  Attributes:
    defences: the defences, e.g. ``(DPClip(1.0, 0.5), Quantize(8))``.
  """

  defences: tuple[Defence, ...] = ()
  name = "compose"

  def __post_init__(self):
    stepping = [d for d in self.defences
                if type(d).per_step is not Defence.per_step]
    if len(stepping) > 1:
      raise ValueError(
          "Compose: argument 'defences' may hold at most one defence that "
          f"changes the per-step gradient, got {[d.name for d in stepping]}")

  def per_step(self, loss_fn, params, batch, key):
    for d in self.defences:
      if type(d).per_step is not Defence.per_step:
        return d.per_step(loss_fn, params, batch, key)
    return super().per_step(loss_fn, params, batch, key)

  def post(self, update, key):
    for i, d in enumerate(self.defences):
      update = d.post(update, jax.random.fold_in(key, i))
    return update

  def describe(self):
    return {"name": self.name,
            "defences": [d.describe() for d in self.defences]}


DEFENCES: Registry[Callable[..., Defence]] = Registry("defence", {
    "none": NoDefence,
    "gaussian": GaussianNoise,
    "laplacian": LaplacianNoise,
    "dp_clip": DPClip,
    "topk": TopK,
    "quantize": Quantize,
})
"""Defence factories by name; ``DEFENCES[name](**params) -> Defence``."""


def available_defences() -> list[str]:
  """Names accepted by `make_defence`, sorted (``DEFENCES.available()``)."""
  return DEFENCES.available()


def register_defence(name: str, factory: Callable[..., Defence], *,
                     overwrite: bool = False) -> None:
  """``DEFENCES.register(name, factory, overwrite=)``.

  Args:
    name: registry name.
    factory: ``factory(**params) -> Defence``.
    overwrite: replace an existing entry instead of raising.

  Raises:
    ValueError: if `name` is taken and not `overwrite`.
    TypeError: if `factory` is not callable.
  """
  DEFENCES.register(name, factory, overwrite=overwrite)


def make_defence(defence: str | Defence | Sequence[Any] | None = None,
                 **params: Any) -> Defence:
  """Resolves a defence given by name, instance, sequence or None.

  Args:
    defence: a registered name (built with `params`), a `Defence`, a sequence
      of either (composed in order), or None (no defence).
    **params: factory arguments when `defence` is a name.

  Returns:
    A `Defence`.

  Raises:
    ValueError: for an unknown name.
    TypeError: for anything else, or for `params` with a non-name.
  """
  if defence is None:
    defence = "none"
  if isinstance(defence, str):
    validate.check_choice(defence, "defence", available_defences(),
                          fn="make_defence")
    return DEFENCES[defence](**params)
  if params:
    raise TypeError("make_defence: keyword parameters are only accepted "
                    "with a defence name")
  if isinstance(defence, Defence):
    return defence
  if isinstance(defence, Sequence):
    return Compose(tuple(make_defence(d) for d in defence))
  raise TypeError(
      "make_defence: argument 'defence' must be a name, a Defence, a sequence "
      f"of them or None, got {defence!r}")
