"""The threat model: what a gradient-inversion attacker observes.

An honest-but-curious server sends parameters θ to a victim, who computes a
gradient (or several local steps) on a private batch ``(x*, y*)``, optionally
defends it, and shares it. The attacker receives a `GradientObservation`:
everything the attack may use, and nothing else (the private images never
enter it). `observe` simulates the victim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import validate
from jaxleak.attacks.inversion import _compile
from jaxleak.attacks.inversion import defences as defences_lib
from jaxleak.attacks.inversion import objectives

Array = jax.Array
PyTree = Any

__all__ = ("GradientObservation", "observe", "canonical_key")

_FN = "GradientObservation"


canonical_key = validate.canonical_key


def _num_classes(apply_fn: Callable[..., Array], params: Any,
                 image_shape: tuple[int, int, int]) -> int:
  n = getattr(apply_fn, "num_classes", None)
  if n is not None:
    return int(n)
  out = jax.eval_shape(apply_fn, params,
                       jax.ShapeDtypeStruct((1,) + image_shape, jnp.float32))
  return int(out.shape[-1])


@dataclasses.dataclass(frozen=True, eq=False)
class GradientObservation:
  """Everything a gradient-inversion attacker sees.

  Attributes:
    apply_fn: the victim model, ``apply_fn(params, x) -> logits`` (white box).
    params: the parameters the victim started from (full variables dict).
    gradient: the shared, possibly defended, gradient: a pytree shaped like
      ``objectives.trainable(params)``. For several local steps it is the
      average gradient ``(θ_0 - θ_K) / (K η)`` (see
      `objectives.local_update_gradient`).
    batch_size: the number of private images B.
    image_shape: ``(H, W, C)`` of one image (the data shape is public).
    num_classes: number of logits (at least 2).
    labels: the private labels ``[B]`` if the attacker knows them, else None.
    bn_stats: per-BatchNorm-layer ``(mean, var)`` of the victim's batch (the
      statistics of its first local step) for BN models, else None.
    local_steps: number of local SGD steps K (1 = a single gradient, fedSGD).
    local_lr: local learning rate η.
    local_batch_size: images per local step (None = the whole batch).
    defence: description of the victim's defence, for reports only.

  Construction validates the gradient against the parameters (structure and
  shapes), that it is finite, and the labels against the batch size; the
  error names the offending argument.
  """

  apply_fn: Callable[..., Array]
  params: PyTree
  gradient: PyTree
  batch_size: int
  image_shape: tuple[int, int, int]
  num_classes: int | None = None
  labels: Array | None = None
  bn_stats: Sequence[tuple[Array, Array]] | None = None
  local_steps: int = 1
  local_lr: float = 1e-3
  local_batch_size: int | None = None
  defence: dict[str, Any] = dataclasses.field(
      default_factory=lambda: {"name": "none"})

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)  # frozen dataclass
    if not callable(self.apply_fn):
      raise TypeError(f"{_FN}: argument 'apply_fn' must be callable, got "
                      f"{self.apply_fn!r}")
    b = validate.check_int(self.batch_size, "batch_size", fn=_FN)
    set_("batch_size", b)
    shape = tuple(self.image_shape)
    if len(shape) != 3 or not all(
        isinstance(d, (int, np.integer)) and d > 0 for d in shape):
      raise ValueError(f"{_FN}: argument 'image_shape' must be (H, W, C) with "
                       f"positive ints, got {self.image_shape!r}")
    set_("image_shape", tuple(int(d) for d in shape))
    validate.check_same_structure(
        self.gradient, objectives.trainable(self.params), "gradient",
        "the model's trainable parameters", fn=_FN)
    validate.check_finite(self.gradient, "gradient", fn=_FN)
    if self.num_classes is None:
      set_("num_classes",
           _num_classes(self.apply_fn, self.params, self.image_shape))
    if self.num_classes < 2:
      raise ValueError(
          f"{_FN}: argument 'num_classes' must be >= 2, got "
          f"{self.num_classes}: a classifier over one class has an "
          "identically zero cross-entropy, so its gradient reveals nothing")
    if self.labels is not None:
      labels = np.asarray(self.labels)
      validate.check_rank(labels, "labels", 1, fn=_FN,
                          what="integer class labels")
      if labels.size and labels.dtype.kind not in "iu":
        raise TypeError(f"{_FN}: argument 'labels' must be integers, got "
                        f"dtype {labels.dtype}")
      if b > labels.shape[0]:
        raise ValueError(
            f"{_FN}: argument 'batch_size' ({b}) is larger than the number of "
            f"labels given ({labels.shape[0]})")
      if b < labels.shape[0]:
        raise ValueError(
            f"{_FN}: argument 'labels' has {labels.shape[0]} entries, more "
            f"than batch_size ({b})")
      if labels.size and (labels.min() < 0
                          or labels.max() >= self.num_classes):
        raise ValueError(
            f"{_FN}: argument 'labels' must lie in [0, {self.num_classes}), "
            f"got values in [{labels.min()}, {labels.max()}]")
      set_("labels", jnp.asarray(labels, jnp.int32))
    k = validate.check_int(self.local_steps, "local_steps", fn=_FN)
    set_("local_steps", k)
    validate.check_positive(self.local_lr, "local_lr", fn=_FN)
    if self.local_batch_size is not None:
      s = validate.check_int(self.local_batch_size, "local_batch_size", fn=_FN)
      if s > b:
        raise ValueError(
            f"{_FN}: argument 'local_batch_size' ({s}) must not exceed "
            f"batch_size ({b})")

  @property
  def has_labels(self) -> bool:
    return self.labels is not None

  @property
  def batch_shape(self) -> tuple[int, int, int, int]:
    """``(B, H, W, C)``: the shape of the private batch."""
    return (self.batch_size,) + self.image_shape

  def operator(self, params: PyTree, images: Array, labels: Array) -> PyTree:
    """The attacker's forward operator: the shared quantity for `images`.

    `victim_gradient` for one local step, `local_update_gradient` otherwise.
    Takes `params` as an argument so jitted attacks pass them in (and do not
    bake them into the program as constants).
    """
    return objectives.local_update_gradient(
        self.apply_fn, params, images, labels, local_steps=self.local_steps,
        local_lr=self.local_lr, local_batch_size=self.local_batch_size)


def observe(apply_fn: Callable[..., Array], params: PyTree, images: Any,
            labels: Any, *, key: Any,
            defence: str | defences_lib.Defence | Sequence[Any] | None = None,
            local_steps: int = 1, local_lr: float = 1e-3,
            local_batch_size: int | None = None,
            reveal_labels: bool = True) -> GradientObservation:
  """Simulates the victim: computes, defends and shares a gradient.

  One local step (fedSGD) shares ``∇_θ L(θ; x, y)`` of the batch-mean
  cross-entropy. With ``local_steps = K > 1`` (fedAvg) the victim takes K SGD
  steps of size `local_lr`, each on `local_batch_size` images of its batch
  taken in order (wrapping around), and shares ``(θ_0 - θ_K) / (K η)``.
  A defence's per-step hook replaces every local gradient (DP-SGD clipping
  and noise); its post hook transforms the shared update (additive noise,
  pruning, quantisation).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: model parameters (a Flax variables dict; only ``params["params"]``
      is differentiated).
    images: private batch ``[B, H, W, C]``, float in [0, 1].
    labels: ``[B]`` integer labels.
    key: PRNG key (or int seed) for the defence's randomness.
    defence: None, a name in `defences.DEFENCES` (default parameters), a
      `defences.Defence`, or a sequence of them.
    local_steps: K >= 1.
    local_lr: η > 0 (irrelevant for K = 1).
    local_batch_size: images per local step (default: all B).
    reveal_labels: include the labels in the observation (label-known threat
      model); otherwise attacks recover them from the gradient.

  Returns:
    A `GradientObservation`.

  Raises:
    ValueError: for images that are not an NHWC batch in [0, 1], labels that
      do not match the batch, or bad options; FloatingPointError for
      non-finite images.
  """
  fn = "observe"
  key = canonical_key(key, fn)
  images = jnp.asarray(images, jnp.float32)
  validate.check_images(images, "images", fn=fn)
  validate.check_finite(images, "images", fn=fn)
  lo, hi = float(jnp.min(images)), float(jnp.max(images))
  if lo < 0.0 or hi > 1.0:
    raise ValueError(f"{fn}: argument 'images' must lie in [0, 1], got values "
                     f"in [{lo:.4g}, {hi:.4g}]")
  b = images.shape[0]
  labels = np.asarray(labels)
  validate.check_shape(labels, "labels", (b,), fn=fn)
  if labels.dtype.kind not in "iu":
    raise TypeError(f"{fn}: argument 'labels' must be integers, got dtype "
                    f"{labels.dtype}")
  labels = jnp.asarray(labels, jnp.int32)
  steps = validate.check_int(local_steps, "local_steps", fn=fn)
  validate.check_positive(local_lr, "local_lr", fn=fn)
  if local_batch_size is not None:
    local_batch_size = validate.check_int(local_batch_size, "local_batch_size", fn=fn)
    if local_batch_size > b:
      raise ValueError(f"{fn}: argument 'local_batch_size' "
                       f"({local_batch_size}) must not exceed the batch size "
                       f"({b})")
  defence = defences_lib.make_defence(defence)

  update = _victim_update(apply_fn, params, images, labels, key, defence,
                          steps, float(local_lr), local_batch_size)
  bn_stats = None
  if getattr(apply_fn, "has_batch_norm", False):
    bn_stats = [(jnp.asarray(m), jnp.asarray(v))
                for m, v in _bn_stats_jit(apply_fn, params, images)]
  return GradientObservation(
      apply_fn=apply_fn, params=params, gradient=update, batch_size=b,
      image_shape=tuple(images.shape[1:]),
      labels=labels if reveal_labels else None, bn_stats=bn_stats,
      local_steps=steps, local_lr=float(local_lr),
      local_batch_size=local_batch_size, defence=defence.describe())


@_compile.jit(static_argnums=0)
def _bn_stats_jit(apply_fn, params, images):
  return apply_fn.with_bn_stats(params, images)[1]


def _victim_update(apply_fn, params, images, labels, key, defence, steps,
                   local_lr, local_batch_size):
  """The defended shared update (jitted once per model/defence/protocol)."""
  return _victim_update_jit(apply_fn, defence, steps, local_batch_size,
                            params, images, labels, key, local_lr)


@_compile.jit(static_argnums=(0, 1, 2, 3))
def _victim_update_jit(apply_fn, defence, steps, local_batch_size, params,
                       images, labels, key, local_lr):
  b = images.shape[0]
  s = b if local_batch_size is None else local_batch_size

  def loss_fn(p, batch):
    x, y = batch
    return objectives.victim_loss(apply_fn, objectives.with_trainable(
        params, p), x, y)

  theta0 = objectives.trainable(params)
  step_key, post_key = jax.random.split(key)
  if steps == 1 and s == b:
    update = defence.per_step(loss_fn, theta0, (images, labels), step_key)
  else:
    theta = theta0
    for k in range(steps):
      idx = jnp.asarray([(k * s + i) % b for i in range(s)])
      batch = (images[idx], labels[idx])
      g = defence.per_step(loss_fn, theta, batch,
                           jax.random.fold_in(step_key, k))
      theta = jax.tree.map(lambda t, gi: t - local_lr * gi, theta, g)
    update = jax.tree.map(lambda t0, t: (t0 - t) / (steps * local_lr),
                          theta0, theta)
  return defence.post(update, post_key)
