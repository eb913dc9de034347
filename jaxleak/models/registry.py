"""Model registry and the functional ``apply_fn(params, x) -> logits`` interface.

``create`` turns a Linen module into a pair ``(apply_fn, params)`` where
``apply_fn`` is a pure function of its arguments, so it composes with
``jax.jit``, ``jax.vmap`` (per-example gradients), nested ``jax.grad``
(gradient-matching inversion), ``jax.jvp`` and ``jax.vjp`` (I²F).

BatchNorm semantics
-------------------
For models with BatchNorm, ``apply_fn(params, x)`` normalises with the
statistics *of the batch x* (train-mode normalisation), which is what a victim
computes when it takes a gradient on its batch; the running averages in
``params["batch_stats"]`` are neither used nor updated. ``apply_fn.eval``
uses the stored running averages instead, and ``apply_fn.train_apply`` also
returns the updated running averages for training loops. Under ``jax.vmap``
over single examples, train-mode BatchNorm normalises each example with its
own statistics, so per-example gradients of a BatchNorm model are *not* the
per-example terms of the batch gradient; use ``norm="group"`` (the default for
``resnet18``) or ``norm="none"`` where that matters (DP-SGD).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxleak._src import validate
from jaxleak._src.registry import Registry
from jaxleak.models import architectures as arch
from jaxleak.models import transformers
from jaxleak.models.initializers import INIT_SCHEMES
from jaxleak.models.initializers import reinit

Array = jax.Array
Params = Any  # A Flax variables dict: {"params": ..., ["batch_stats": ...]}.


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registry entry.

  Attributes:
    builder: ``builder(num_classes, **model_kwargs) -> nn.Module``; validates
      its keyword arguments.
    fixed_resolution: True when the model flattens feature maps into a Dense
      layer, so the parameters only fit the (H, W) they were created for.
    description: one line for listings.
    default_init: the `reinit` scheme that reproduces the module's own
      kernel/bias initialisers; what ``init="default"`` means for this model.
    inputs: ``"images"`` (NHWC floats, ``input_shape=(H, W, C)``) or
      ``"tokens"`` (int ids ``[B, L]``, ``input_shape=(L,)``).
  """

  builder: Callable[..., nn.Module]
  fixed_resolution: bool
  description: str
  default_init: str = "lecun"
  inputs: str = "images"


def _check_act(act: str, fn: str = "create") -> None:
  validate.check_choice(act, "act", tuple(arch.ACTIVATIONS), fn=fn)


def _check_width(width: int) -> None:
  validate.check_int(width, "width", fn="create")


def _build_lenet(num_classes: int, *, act: str = "sigmoid") -> nn.Module:
  """lenet options: act (default "sigmoid", as in DLG)."""
  _check_act(act)
  return arch.LeNet(num_classes=num_classes, act=act)


def _build_convnet(num_classes: int, *, width: int = 32, norm: str = "none",
                   act: str = "relu") -> nn.Module:
  """convnet options: width (32), norm ("none" | "group" | "batch"), act.

  norm defaults to "none" so that per-example gradients are valid. act
  defaults to "relu", as in Geiping et al. and breaching: its second derivative
  is zero almost everywhere, yet the input gradient of a gradient-matching loss
  is not, because the parameter gradient depends on the activations themselves
  (tests check it is finite and non-zero). Use "softplus" or "gelu" for a
  smooth network.
  """
  _check_width(width)
  validate.check_choice(norm, "norm", arch.NORMS, fn="create")
  _check_act(act)
  return arch.ConvNet(num_classes=num_classes, width=width, norm=norm, act=act)


def _build_mlp(num_classes: int, *, hidden: Sequence[int] = (512, 512),
               act: str = "sigmoid") -> nn.Module:
  """mlp options: hidden (layer sizes, default (512, 512)), act ("sigmoid")."""
  hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
  if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0
             for h in hidden):
    raise ValueError(
        f"create: argument 'hidden' must be a sequence of positive ints, got {hidden!r}")
  _check_act(act)
  return arch.MLP(num_classes=num_classes, hidden=hidden, act=act)


def _build_cnn_mnist(num_classes: int, *, act: str = "tanh") -> nn.Module:
  """cnn_mnist options: act (default "tanh", the tempered-sigmoid choice)."""
  _check_act(act)
  return arch.CNNMnist(num_classes=num_classes, act=act)


def _build_cnn_cifar(num_classes: int, *, act: str = "tanh",
                     pool: str = "max") -> nn.Module:
  """cnn_cifar options: act ("tanh"), pool ("max" | "avg")."""
  _check_act(act)
  validate.check_choice(pool, "pool", ("max", "avg"), fn="create")
  return arch.CNNCifar(num_classes=num_classes, act=act, pool=pool)


def _build_resnet18(num_classes: int, *, width: int = 64,
                    norm: str = "group") -> nn.Module:
  """resnet18 options: width (base channels, 64), norm ("group" | "batch")."""
  _check_width(width)
  validate.check_choice(norm, "norm", ("group", "batch"), fn="create")
  return arch.ResNet18(num_classes=num_classes, width=width, norm=norm)


def _check_heads(dim: int, heads: int, depth: int, mlp_dim: int) -> None:
  for name, value in (("dim", dim), ("heads", heads), ("depth", depth),
                      ("mlp_dim", mlp_dim)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(
          f"create: argument '{name}' must be a positive int, got {value!r}")
  if dim % heads:
    raise ValueError(f"create: argument 'dim'={dim} must be divisible by "
                     f"'heads'={heads}")


def _build_vit(num_classes: int, *, patch: int = 4, dim: int = 64,
               depth: int = 2, heads: int = 4, mlp_dim: int = 128) -> nn.Module:
  """vit options: patch (4), dim (64), depth (2), heads (4), mlp_dim (128)."""
  _check_heads(dim, heads, depth, mlp_dim)
  _check_width(patch)
  return transformers.ViT(num_classes=num_classes, patch=patch, dim=dim,
                          depth=depth, heads=heads, mlp_dim=mlp_dim)


def _build_text_transformer(num_classes: int, *, vocab_size: int = 256,
                            dim: int = 64, depth: int = 2, heads: int = 4,
                            mlp_dim: int = 128) -> nn.Module:
  """text_transformer options: vocab_size (256), dim, depth, heads, mlp_dim."""
  _check_heads(dim, heads, depth, mlp_dim)
  if not isinstance(vocab_size, int) or vocab_size < 1:
    raise ValueError("create: argument 'vocab_size' must be a positive int, "
                     f"got {vocab_size!r}")
  return transformers.TextTransformer(
      num_classes=num_classes, vocab_size=vocab_size, dim=dim, depth=depth,
      heads=heads, mlp_dim=mlp_dim)


MODELS: Registry[ModelSpec] = Registry("model", {
    "lenet": ModelSpec(_build_lenet, True,
                       "DLG sigmoid LeNet: 3 conv 5x5x12 + Dense",
                       default_init="uniform"),
    "convnet": ModelSpec(_build_convnet, False,
                         "Geiping et al. 8-layer ConvNet, global average pool"),
    "mlp": ModelSpec(_build_mlp, True, "flatten + Dense hidden layers"),
    "cnn_mnist": ModelSpec(_build_cnn_mnist, True,
                           "tanh DP-SGD MNIST CNN (Papernot et al.), 26k params"),
    "cnn_cifar": ModelSpec(_build_cnn_cifar, True,
                           "tanh DP-SGD CIFAR-10 CNN, 551k params"),
    "resnet18": ModelSpec(_build_resnet18, False,
                          "CIFAR-style ResNet-18, GroupNorm by default"),
    "vit": ModelSpec(_build_vit, True,
                     "small pre-LN ViT: patch embedding, class token, MHA"),
    "text_transformer": ModelSpec(
        _build_text_transformer, True,
        "small pre-LN transformer over int tokens [B, L], mean-pooled",
        inputs="tokens"),
}, check=lambda spec: isinstance(spec, ModelSpec), requirement="a ModelSpec")


def available() -> list[str]:
  """Names accepted by `create`, sorted (``MODELS.available()``)."""
  return MODELS.available()


def _mean_var(h: Array, axis: int) -> tuple[Array, Array]:
  axis = axis % h.ndim
  axes = tuple(a for a in range(h.ndim) if a != axis)
  mean = jnp.mean(h, axis=axes)
  shape = [1] * h.ndim
  shape[axis] = h.shape[axis]
  # Two-pass biased variance, the quantity BatchNorm normalises with.
  var = jnp.mean(jnp.square(h - mean.reshape(shape)), axis=axes)
  return mean, var


class ModelFn:
  """The pure function ``apply_fn(params, x) -> logits`` returned by `create`.

  Instances are hashable by identity, so they can be closed over or passed as
  static arguments to ``jax.jit``.

  Attributes:
    name: registry name.
    num_classes: number of logits.
    input_shape: (H, W, C) the parameters were created for.
    module: the Linen module.
    has_batch_norm: whether the variables hold "batch_stats".
    bn_layers: paths (tuples of names) of the BatchNorm layers in call order;
      the order of `with_bn_stats` and `bn_running_stats`.
    fixed_resolution: whether inputs must have exactly `input_shape`
      (otherwise only the channel count must match).
  """

  def __init__(self, name: str, module: nn.Module, num_classes: int,
               input_shape: tuple[int, int, int], has_batch_norm: bool,
               bn_layers: tuple[tuple[str, ...], ...], fixed_resolution: bool,
               inputs: str = "images"):
    self.name = name
    self.inputs = inputs
    self.module = module
    self.num_classes = num_classes
    self.input_shape = input_shape
    self.has_batch_norm = has_batch_norm
    self.bn_layers = bn_layers
    self.fixed_resolution = fixed_resolution

  def __repr__(self) -> str:
    return (f"ModelFn(name={self.name!r}, num_classes={self.num_classes}, "
            f"input_shape={self.input_shape}, has_batch_norm={self.has_batch_norm})")

  def _check_x(self, x: Any, fn: str) -> None:
    # Shapes are static even under jit/vmap, so this check always runs.
    if self.inputs == "tokens":
      if (jnp.ndim(x) != 2 or tuple(jnp.shape(x)[1:]) != self.input_shape
          or not jnp.issubdtype(jnp.result_type(x), jnp.integer)):
        raise ValueError(
            f"{fn}: argument 'x' must be int token ids [B, {self.input_shape[0]}]"
            f", got {jnp.result_type(x)} of shape {tuple(jnp.shape(x))}")
      return
    validate.check_images(x, "x", fn=fn, channels=self.input_shape[-1])
    if self.fixed_resolution and tuple(x.shape[1:3]) != self.input_shape[:2]:
      raise ValueError(
          f"{fn}: argument 'x' must have spatial size {self.input_shape[:2]} "
          f"(model {self.name!r} was created for input_shape "
          f"{self.input_shape}), got shape {tuple(x.shape)}")

  def __call__(self, params: Params, x: Array) -> Array:
    """Logits [B, num_classes] for images x [B, H, W, C].

    BatchNorm layers (if any) use the statistics of `x` and the running
    averages are not updated; see `eval` for inference mode.
    """
    self._check_x(x, f"{self.name}.apply_fn")
    if self.has_batch_norm:
      logits, _ = self.module.apply(params, x, train=True,
                                    mutable=["batch_stats"])
      return logits
    return self.module.apply(params, x, train=False)

  def eval(self, params: Params, x: Array) -> Array:
    """Logits using the stored running BatchNorm averages (inference mode).

    Identical to calling the function for models without BatchNorm.
    """
    self._check_x(x, f"{self.name}.eval")
    return self.module.apply(params, x, train=False)

  def train_apply(self, params: Params, x: Array) -> tuple[Array, Params]:
    """Train-mode logits and the variables with updated running BN averages.

    Returns:
      (logits, new_params) where new_params equals `params` with
      "batch_stats" replaced by the updated running averages (unchanged for
      models without BatchNorm).
    """
    self._check_x(x, f"{self.name}.train_apply")
    if not self.has_batch_norm:
      return self.module.apply(params, x, train=False), params
    logits, updates = self.module.apply(params, x, train=True,
                                        mutable=["batch_stats"])
    return logits, {**params, "batch_stats": updates["batch_stats"]}

  def with_bn_stats(self, params: Params, x: Array
                    ) -> tuple[Array, list[tuple[Array, Array]]]:
    """Train-mode logits plus the batch statistics every BatchNorm layer saw.

    Args:
      params: variables dict.
      x: images [B, H, W, C].

    Returns:
      (logits, stats): logits as from ``apply_fn(params, x)``; stats is a list
      with one (mean, var) pair per BatchNorm layer in call order (see
      `bn_layers`), each of shape [channels]: the mean and biased variance of
      the layer's input over batch and spatial axes. Empty for models without
      BatchNorm. Differentiable w.r.t. `x` (for BN-statistic matching).
    """
    stats: list[tuple[Array, Array]] = []

    # A method interceptor sees every BatchNorm call in execution order,
    # whatever the nesting, without changing the modules.
    def interceptor(next_fun, args, kwargs, context):
      if (isinstance(context.module, nn.BatchNorm)
          and context.method_name == "__call__"):
        stats.append(_mean_var(args[0], context.module.axis))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      logits = self(params, x)
    return logits, stats

  def bn_running_stats(self, params: Params) -> list[tuple[Array, Array]]:
    """The stored running (mean, var) of each BatchNorm layer, in call order.

    Matches the order of `with_bn_stats`, so the two lists can be compared
    layer by layer (the "BN prior" of DeepInversion / GradInversion). Flax
    stores the biased running variance.
    """
    out = []
    for path in self.bn_layers:
      node = params["batch_stats"]
      for name in path:
        node = node[name]
      out.append((node["mean"], node["var"]))
    return out


def _check_input_shape(input_shape: Any) -> tuple[int, int, int]:
  try:
    shape = tuple(input_shape)
  except TypeError:
    shape = None
  if (shape is None or len(shape) != 3 or not all(
      isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
    raise ValueError(
        "create: argument 'input_shape' must be (H, W, C) with positive ints "
        f"for one image, got {input_shape!r}")
  return shape  # type: ignore[return-value]


def create(name: str, num_classes: int, input_shape: Sequence[int],
           key: jax.Array, *, init: str = "default",
           **model_kwargs: Any) -> tuple[ModelFn, Params]:
  """Builds a registered model and initialises its variables.

  Args:
    name: one of `available()`.
    num_classes: number of output logits (>= 2).
    input_shape: (H, W, C) of one image (NHWC float32 in [0, 1]), or (L,) for
      models over token ids (`ModelSpec.inputs == "tokens"`).
    key: PRNG key for initialisation (an int is accepted as a seed).
    init: initialisation scheme, one of INIT_SCHEMES (see
      `jaxleak.models.initializers`). "default" keeps the module's own
      initialisers (U(-0.5, 0.5) for lenet, Flax defaults otherwise).
    **model_kwargs: architecture options, e.g. ``width``, ``norm``, ``act``
      (see the builders in `MODELS`).

  Returns:
    (apply_fn, params): a `ModelFn` and the full Flax variables dict
    ({"params": ...} plus {"batch_stats": ...} for BatchNorm models).

  Raises:
    ValueError: for an unknown name or init scheme, or invalid shapes/options.
    TypeError: for a keyword argument the model does not accept.
  """
  validate.check_choice(name, "name", available(), fn="create")
  key = validate.canonical_key(key, "create")
  if (not isinstance(num_classes, int) or isinstance(num_classes, bool)
      or num_classes < 2):
    # One class would train and attack an identically zero cross-entropy.
    raise ValueError(
        f"create: argument 'num_classes' must be an int >= 2 (a classifier "
        f"needs two classes), got {num_classes!r}")
  spec = MODELS[name]
  if spec.inputs == "tokens":
    if (not isinstance(input_shape, (tuple, list)) or len(input_shape) != 1
        or not isinstance(input_shape[0], int) or input_shape[0] < 1):
      raise ValueError(
          f"create: model {name!r} takes token ids; argument 'input_shape' must"
          f" be (sequence_length,), got {input_shape!r}")
    input_shape = tuple(input_shape)
  else:
    input_shape = _check_input_shape(input_shape)
  validate.check_choice(init, "init", INIT_SCHEMES, fn="create")

  validate.check_keywords(spec.builder, model_kwargs, f"model {name!r}",
                          fn="create")
  module = spec.builder(num_classes, **model_kwargs)

  bn_layers: list[tuple[str, ...]] = []

  def record_bn(next_fun, args, kwargs, context):
    if (isinstance(context.module, nn.BatchNorm)
        and context.method_name == "__call__"):
      bn_layers.append(tuple(context.module.path))
    return next_fun(*args, **kwargs)

  # Modules that expose kernel_init/bias_init (all registered ones) are
  # initialised with zeros and then filled by `reinit` from a single random
  # draw: one PRNG kernel instead of one per layer, which cuts creation time on
  # CPU from seconds to a fraction of a second. The distributions equal the
  # modules' own initialisers (ModelSpec.default_init).
  deferred = all(hasattr(module, f) for f in ("kernel_init", "bias_init"))
  scheme = init
  if deferred:
    scheme = spec.default_init if init == "default" else init
    zeros = nn.initializers.zeros_init()
    init_module = module.clone(kernel_init=zeros, bias_init=zeros)
  else:
    init_module = module

  init_key, reinit_key = jax.random.split(key)
  dummy = jnp.zeros((1,) + input_shape,
                    jnp.int32 if spec.inputs == "tokens" else jnp.float32)
  with nn.intercept_methods(record_bn):
    # One compiled program rather than many eagerly dispatched ops.
    variables = jax.jit(functools.partial(init_module.init, train=False))(
        init_key, dummy)
  variables = reinit(variables, scheme, reinit_key)

  apply_fn = ModelFn(name=name, module=module, num_classes=num_classes,
                     input_shape=input_shape,
                     has_batch_norm="batch_stats" in variables,
                     bn_layers=tuple(bn_layers),
                     fixed_resolution=spec.fixed_resolution,
                     inputs=spec.inputs)
  return apply_fn, variables
