"""Per-example gradient norms and weighted sums from layer inputs and output gradients.

For a Dense or Conv layer ``z = a W + b`` the gradient of example i's loss is

    ∇_W loss_i = A_iᵀ G_i,      ∇_b loss_i = Σ_t G_i[t],

where ``A_i`` is ``[T, K]`` (the layer input; for a convolution its im2col
patches, ``K = kh·kw·C``) and ``G_i = ∂loss_i/∂z_i`` is ``[T, O]``. One
ordinary backward pass of ``Σ_i loss_i`` with respect to zero "taps" added to
every layer output yields all ``G_i`` at once; the ``A_i`` are kept from the
forward pass. Nothing else is differentiated: no kernel gradient is ever
formed by the framework, which on XLA:CPU is the slowest part of a convolution
step. This is the book-keeping idea of Bu et al. (2023) with their mixed
ghost norms:

  * materialised: ``‖A_iᵀ G_i‖²`` from the ``[K, O]`` per-example gradient.
    Convolutions compute it tap by tap (``kh·kw`` batched ``[C, O]`` products
    of strided slices, no im2col buffer); the weighted sum is then
    ``Σ_i w_i (A_iᵀ G_i)``. Costs ``T·K·O`` per example and holds the layer's
    ``B x params`` gradients (as the ``vmap`` path does for all layers).
  * ghost (Dense): ``‖A_iᵀ G_i‖² = Σ_{t,s} (A_i A_iᵀ)_{ts} (G_i G_iᵀ)_{ts}``,
    costing ``T²·(K + O)``; exact, and for a Dense layer on one vector
    (``T = 1``) just ``‖a_i‖²·‖g_i‖²``. The weighted sum is one ordinary
    matrix product ``Aᵀ (w ⊙ G)`` over the batch.
  * ghost (Conv): the tap-wise per-example gradients are reduced to norms
    as they are formed and not kept; the weighted sum is recomputed tap by
    tap as ``Σ_b tap_bᵀ (w_b G_b)``. Chosen when a layer's per-example
    gradient (``K·O``) is at least 3/4 of what the recomputation reads
    (``kh·kw·T·(C + O)``): there it is faster (memory traffic; measured, see
    `_prefer_ghost`) and it never holds that layer's ``B x params`` buffer.
  * Gram (Conv): when few output positions meet a large kernel
    (``T·(K + O) <= K·O``: ResNet stages at 8x8 and 4x4), the norm is the
    ghost norm of the im2col rows, ``Σ_{t,s} (A_i A_iᵀ)_{ts} (G_i G_iᵀ)_{ts}``
    with ``A_i A_iᵀ = Σ_taps tap_i tap_iᵀ`` (no im2col buffer), costing
    ``T²·(K + O)`` instead of ``T·K·O`` per example and forming no
    per-example gradient at all; the weighted sum is recomputed as for
    ghost. This is the per-layer choice of Bu et al.'s (2022) mixed ghost
    clipping for convolutions, with a threshold from measured cost. XLA:CPU,
    B=256, one 3x3 512->512 conv at 4x4: 28 ms against 911 ms tap by tap
    (`_prefer_gram`).

Each layer takes the cheaper form. A strided convolution whose strides
divide its kernel is run, and differentiated, as the equal stride-1
convolution of space-to-depth blocks (`conv_geometry.fold_strides`): XLA:CPU
is several times faster on it when C is small, and it has ``sh·sw`` times
fewer taps. Its per-example gradients are unfolded back to the layer's
kernel layout (a permutation, so the norms are unchanged). Stride-1 (and
folded) convolutions run through `stride1_conv`, whose input gradient stays
a plain convolution inside the loops `jaxleak.dp.per_example` walks batches
in on the CPU.

The norms are exact (no
approximation), so every sensitivity bound of `jaxleak.dp.weights` holds as
for the ``vmap`` path.

Embeddings (``flax.linen.Embed``) are tapped too: the per-example gradient
of the table is a scatter of the output gradients into the looked-up rows,
and its norm the token-equality-masked Gram of those gradients
(`_embed_terms`), so no ``[V, D]`` per-example table is formed.

Applicability: a tapped leaf must be the kernel or bias of exactly one plain
``flax.linen.Dense`` or 2-D ``flax.linen.Conv`` call (no groups, dilation,
masks or circular padding), or the table of one ``flax.linen.Embed`` lookup
(``Embed.attend``, tied output embeddings, counts as a second use), and
examples must not interact (no BatchNorm in train mode). `plan` checks this at
trace time and names the leaves that are not covered. The mixed path
(`weighted_grad_sum` with uncovered leaves) differentiates those per example
in the same backward pass; ``path="auto"`` takes it whenever a layer is
tapped, ``vmap`` when none is (e.g. NNX models, whose layers are not linen
modules).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxleak._src import conv_geometry

__all__ = ("Layer", "Plan", "plan", "weighted_grad_sum")

LossFn = Callable[[Any, Any], jax.Array]
KeyPath = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Layer:
  """One tapped Dense/Conv call (static metadata found while tracing).

  Attributes:
    kind: ``"dense"``, ``"conv"`` or ``"embed"`` (for an embedding the
      "kernel" is the ``[V, D]`` table and the recorded input the tokens).
    kernel_path: key path of the kernel leaf in the params pytree.
    bias_path: key path of the bias leaf, or None.
    kernel_shape: ``[K_in, O]`` (dense) or ``[kh, kw, C, O]`` (conv).
    geometry: strides and pads of a conv, None for dense.
    out_shape: shape of the layer output for one example (batch of 1).
    ghost: whether the per-example kernel gradients are not kept (Dense:
      Gram norm; Conv: norms reduced tap by tap, or from the Gram, and the
      weighted sum recomputed).
    folded_strides: for a strided conv run as a stride-1 conv on
      space-to-depth blocks (`conv_geometry.fold_strides`), its strides; the
      recorded input and `geometry` are then the folded ones. None otherwise.
    gram: for a conv, whether its norm comes from the Gram of its im2col
      rows and output gradients (then `ghost` is True as well).
    own_conv: for a conv, whether the recorder runs it itself as a stride-1
      convolution with an explicit input gradient (`stride1_conv`).
  """
  kind: str
  kernel_path: KeyPath
  bias_path: KeyPath | None
  kernel_shape: tuple[int, ...]
  geometry: conv_geometry.ConvGeometry | None
  out_shape: tuple[int, ...]
  ghost: bool
  folded_strides: tuple[int, int] | None = None
  gram: bool = False
  own_conv: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
  """Layers of a loss function, and the parameter leaves none of them covers.

  Attributes:
    layers: the tapped calls, in call order.
    uncovered: one readable line per uncovered inexact leaf (path and reason).
    uncovered_paths: their key paths; the mixed path differentiates these
      per example (``vmap``) and the layers by book-keeping.
  """
  layers: tuple[Layer, ...]
  uncovered: tuple[str, ...]
  uncovered_paths: tuple[KeyPath, ...] = ()

  @property
  def applicable(self) -> bool:
    """Whether book-keeping alone covers every parameter (pure layerwise)."""
    return bool(self.layers) and not self.uncovered


class _Recorder:
  """Interceptor state for one trace: taps Dense/Conv/Embed calls on known params.

  `covered`, if given, restricts tapping to layers whose leaves are in it
  (the others are differentiated per example by the mixed path).
  """

  def __init__(self, params: Any, taps: list[jax.Array] | None,
               covered: frozenset[KeyPath] | None = None):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    self.path_of = {id(leaf): path for path, leaf in flat
                    if covered is None or path in covered}
    self.taps = taps
    self.layers: list[Layer] = []
    self.inputs: list[jax.Array] = []
    # Leaves read by an untapped method (Embed.attend: tied embeddings).
    self.other_uses: list[KeyPath] = []

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    if type(module) is nn.Embed:  # pylint: disable=unidiomatic-typecheck
      return self._embed(next_fun, args, kwargs, context)
    if (context.method_name != "__call__" or kwargs or len(args) != 1
        or type(module) not in (nn.Dense, nn.Conv)):  # pylint: disable=unidiomatic-typecheck
      return next_fun(*args, **kwargs)
    variables = module.variables.get("params", {})
    kernel_path = self.path_of.get(id(variables.get("kernel")))
    bias = variables.get("bias") if module.use_bias else None
    bias_path = None if bias is None else self.path_of.get(id(bias))
    if kernel_path is None or (bias is not None and bias_path is None):
      return next_fun(*args, **kwargs)  # Initialisation, or params not ours.
    x = args[0]
    kernel = variables["kernel"]
    kernel_shape = tuple(kernel.shape)
    folded_strides, taps_kernel_shape = None, kernel_shape
    if type(module) is nn.Conv:  # pylint: disable=unidiomatic-typecheck
      geometry = conv_geometry.conv_geometry(module, x)
      if geometry is None:
        return next_fun(*args, **kwargs)
      kind, own_conv = "conv", False
      # The recorder runs a convolution itself only where Flax's would be the
      # plain one (no dtype or precision of its own).
      plain = (module.dtype is None and module.precision is None
               and x.dtype == kernel.dtype)
      if plain and conv_geometry.can_fold_strides(geometry):
        # Same output; XLA:CPU runs the folded stride-1 convolution several
        # times faster when C is small (cnn_mnist conv0, B=256: 3.1 vs
        # 11.5 ms), and its per-example gradients take kh·kw/(sh·sw) taps.
        folded_strides = geometry.strides
        x, folded_kernel, geometry = conv_geometry.fold_strides(x, kernel,
                                                                geometry)
        taps_kernel_shape = tuple(folded_kernel.shape)
        y = stride1_conv(x, folded_kernel, geometry.pads)
        own_conv = True
      elif plain and geometry.strides == (1, 1):
        y = stride1_conv(x, kernel, geometry.pads)
        own_conv = True
      else:
        y = next_fun(x)
      if own_conv and bias is not None:
        y = y + bias
    else:
      geometry, kind, own_conv = None, "dense", False
      y = next_fun(x)
    index = len(self.layers)
    gram = kind == "conv" and _prefer_gram(taps_kernel_shape, y.shape)
    self.layers.append(Layer(kind, kernel_path, bias_path, kernel_shape,
                             geometry, tuple(y.shape),
                             gram or _prefer_ghost(kind, taps_kernel_shape,
                                                   y.shape),
                             folded_strides, gram, own_conv))
    self.inputs.append(x)
    if self.taps is not None:
      y = y + self.taps[index].astype(y.dtype)
    return y

  def _embed(self, next_fun, args, kwargs, context):
    """Taps ``nn.Embed.__call__`` (a row lookup); records other uses of the table."""
    if context.method_name == "setup":
      return next_fun(*args, **kwargs)
    table = context.module.variables.get("params", {}).get("embedding")
    path = self.path_of.get(id(table))
    if path is None:
      return next_fun(*args, **kwargs)
    if context.method_name != "__call__" or kwargs or len(args) != 1:
      self.other_uses.append(path)  # e.g. attend(): the table as a matmul.
      return next_fun(*args, **kwargs)
    tokens = args[0]
    y = next_fun(tokens)
    index = len(self.layers)
    self.layers.append(Layer("embed", path, None, tuple(table.shape), None,
                             tuple(y.shape),
                             _prefer_ghost("embed", table.shape, y.shape)))
    self.inputs.append(tokens)
    if self.taps is not None:
      y = y + self.taps[index].astype(y.dtype)
    return y


def stride1_conv(x: jax.Array, kernel: jax.Array, pads) -> jax.Array:
  """Stride-1 NHWC/HWIO convolution whose input gradient is an ordinary convolution.

  The value and both gradients are those of ``lax.conv_general_dilated``.
  Autodiff writes the input gradient as a convolution with a reversed kernel
  read in ``OI`` order; XLA folds that into the convolution at the top level
  of a program, but inside a loop body (`jaxleak.dp.per_example` walks
  transformer and CNN batches in ``lax.map`` chunks on the CPU) XLA:CPU
  leaves it to a generic kernel, 20x slower than YNNPACK (cnn_cifar conv1,
  B=256: 62 ms against 3 ms per 16 examples). Here the reversed, transposed
  kernel is formed explicitly, behind an optimisation barrier, so the input
  gradient is a plain ``HWIO`` convolution everywhere. Reverse-mode only
  (a ``custom_vjp``), like everything the layerwise path differentiates.
  """
  return _stride1_conv(tuple(map(tuple, pads)))(x, kernel)


@functools.cache
def _stride1_conv(pads):
  numbers = conv_geometry.DIMENSION_NUMBERS
  def conv(x, kernel, pads=pads):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pads,
                                        dimension_numbers=numbers)

  @jax.custom_vjp
  def f(x, kernel):
    return conv(x, kernel)

  def fwd(x, kernel):
    return conv(x, kernel), (x, kernel)

  def bwd(res, g):
    x, kernel = res
    kh, kw = kernel.shape[:2]
    flipped = jax.lax.optimization_barrier(
        jnp.transpose(jnp.flip(kernel, (0, 1)), (0, 1, 3, 2)))
    # Stride 1: the input gradient pads g by k - 1 - pad on each side.
    back = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads))
    _, kernel_vjp = jax.vjp(lambda k: conv(x, k), kernel)
    return conv(g, flipped, back), kernel_vjp(g)[0]

  f.defvjp(fwd, bwd)
  return f


def _prefer_ghost(kind: str, kernel_shape, out_shape) -> bool:
  """Whether to skip keeping per-example kernel gradients (module docstring)."""
  k, o = math.prod(kernel_shape[:-1]), kernel_shape[-1]
  t = math.prod(out_shape[:-1])
  if kind == "conv":
    # XLA:CPU, B=256, whole DP steps. Ratio k·o / (kh·kw·t·(c+o)) of 1
    # (cnn_cifar 8x8x128->128): recomputing 354 ms, materialising 431 ms;
    # 0.85 (cnn_mnist's folded conv1): 6.2-7.3k vs 4.9k samples/s; 0.67
    # (cnn_cifar 16x16x64->128): 147-156 vs 164-166 samples/s; 0.016
    # (32x32x32->32): 1224 vs 479 ms. Hence the threshold 3/4.
    kh, kw, c, _ = kernel_shape
    return 4 * k * o >= 3 * kh * kw * t * (c + o)
  if kind == "embed":
    # Token-equality Gram (T²·D) against a [V, D] per-example table.
    return t * t <= k * o
  return t * t * (k + o) < t * k * o


def _prefer_gram(kernel_shape, out_shape) -> bool:
  """Whether a conv's norm is cheaper from the Gram: ``T·(K + O) <= K·O``.

  XLA:CPU, B=256, norms alone, 3x3 kernels (ratio of the two sides: tap by
  tap vs Gram): 4x4 512->512 (0.03) 911 vs 28 ms; 8x8 256->256 (0.28) 348
  vs 77; 8x8 80->80 (0.89) 33 vs 25; 8x8 64->64 (1.11) 25 vs 23, but 16x16
  256->256 (1.11) 857 vs 1059 and 16x16 128->128 (2.22) 218 vs 1288.
  """
  k, o = math.prod(kernel_shape[:-1]), kernel_shape[-1]
  t = math.prod(out_shape[:-1])
  return t * (k + o) <= k * o


def _one_example(loss_fn: LossFn, recorder: _Recorder, params, example):
  """``loss_fn`` (returning ``(loss, aux)``) on one example, as a batch of 1."""
  with nn.intercept_methods(recorder):
    return loss_fn(params, jax.tree.map(lambda a: a[None], example))


def plan(loss_fn: LossFn, params: Any, batch: Any) -> Plan:
  """Finds the tapped layers of ``loss_fn`` (abstract trace, no FLOPs).

  ``loss_fn(params, batch) -> (loss, aux)``, as in `weighted_grad_sum`.
  """
  found: dict[str, Any] = {}

  def trace(p, example, covered):
    recorder = _Recorder(p, None, covered)
    out = _one_example(loss_fn, recorder, p, example)
    found["layers"] = tuple(recorder.layers)
    found["other_uses"] = tuple(recorder.other_uses)
    return out

  example = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                         batch)
  jax.eval_shape(lambda p, x: trace(p, x, None), params, example)
  used: dict[KeyPath, int] = {}
  for layer in found["layers"]:
    for path in (layer.kernel_path, layer.bias_path):
      if path is not None:
        used[path] = used.get(path, 0) + 1
  for path in found["other_uses"]:
    used[path] = used.get(path, 0) + 1
  uncovered, uncovered_paths, covered = [], [], set()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      continue
    if used.get(path, 0) == 1:
      covered.add(path)
      continue
    reason = "shared by several calls" if used.get(path, 0) > 1 else (
        "not a Dense/Conv/Embed kernel or bias")
    uncovered.append(f"{jax.tree_util.keystr(path)} ({reason})")
    uncovered_paths.append(path)
  # A layer with one uncovered leaf (a kernel shared with another call) is
  # left untapped; all its leaves then go to the per-example (vmap) part.
  keep = [layer for layer in found["layers"]
          if all(p is None or p in covered
                 for p in (layer.kernel_path, layer.bias_path))]
  for layer in found["layers"]:
    if layer not in keep:
      for p in (layer.kernel_path, layer.bias_path):
        if p is not None and p not in uncovered_paths:
          uncovered.append(f"{jax.tree_util.keystr(p)} (its layer shares a leaf)")
          uncovered_paths.append(p)
  covered -= set(uncovered_paths)
  if len(keep) != len(found["layers"]):
    jax.eval_shape(lambda p, x: trace(p, x, frozenset(covered)), params, example)
    keep = list(found["layers"])
  return Plan(tuple(keep), tuple(uncovered), tuple(uncovered_paths))


def _covered(the_plan: Plan) -> frozenset[KeyPath]:
  return frozenset(p for layer in the_plan.layers
                   for p in (layer.kernel_path, layer.bias_path) if p is not None)


def _conv_taps(x: jax.Array, geometry: conv_geometry.ConvGeometry, out_hw):
  """Yields ``((i, j), slice)``: the input under kernel tap (i, j), ``[..., Ho, Wo, C]``."""
  (kh, kw), (sh, sw), pads = geometry
  xp = jnp.pad(x, ((0, 0),) * (x.ndim - 3) + (pads[0], pads[1], (0, 0)))
  ho, wo = out_hw
  for i in range(kh):
    for j in range(kw):
      yield xp[..., i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]


# Stacked taps per chunk of `_tap_products`'s CPU loop, and the largest chunk.
# XLA:CPU, B=256, chunks of 1-32 examples: the best held 4 examples of 1.2 MB
# of taps, 4-8 of 0.6 MB, 8-16 of 0.29 MB, 32 of 0.11 MB.
_TAP_CHUNK_BYTES = 4 * 2**20
_MAX_TAP_CHUNK = 32


def _tap_chunk(example_bytes: int) -> int:
  """Examples per chunk: the power of two nearest ``_TAP_CHUNK_BYTES / example_bytes``, in [1, 32]."""
  ratio = _TAP_CHUNK_BYTES / max(1, example_bytes)
  return int(min(_MAX_TAP_CHUNK, max(1, 2 ** round(math.log2(ratio)))))


def _tap_products_whole_batch(a, g, geometry, out_hw, norms: bool):
  """`_tap_products` as one batched product per tap (GPU, TPU)."""
  per_tap = [jnp.einsum("b...c,b...o->bco", tap, g)
             for tap in _conv_taps(a, geometry, out_hw)]
  if norms:  # Reduced tap by tap: no [B, taps, C, O] buffer.
    return sum(jnp.sum(jnp.square(p), axis=(1, 2)) for p in per_tap)
  return jnp.stack(per_tap, axis=1)


def _tap_products_chunked(a, g, geometry, out_hw, norms: bool):
  """`_tap_products` over cache-sized chunks of examples (CPU)."""
  def one(example):
    a_i, g_i = example
    prods = jnp.einsum("k...c,...o->kco",
                       jnp.stack(list(_conv_taps(a_i, geometry, out_hw))), g_i)
    return jnp.sum(jnp.square(prods)) if norms else prods
  (kh, kw), c = geometry.kernel_hw, a.shape[-1]
  tap_bytes = kh * kw * math.prod(g.shape[1:-1]) * c * a.dtype.itemsize
  return jax.lax.map(one, (a, g), batch_size=min(a.shape[0],
                                                 _tap_chunk(tap_bytes)))


def _tap_products(a: jax.Array, g: jax.Array,
                  geometry: conv_geometry.ConvGeometry, out_hw, norms: bool):
  """Per-example tap-wise kernel gradients ``[B, kh·kw, C, O]``, or their squared norms ``[B]``.

  ``a`` ``[B, ..., H, W, C]`` is the (padded here) layer input and ``g``
  ``[B, ..., Ho, Wo, O]`` the output gradient. Tap by tap beat one im2col
  product on both benchmark CNNs (XLA:CPU, B=256: 320 vs 465 ms for a 3x3
  32->32 conv at 32x32; 8.9 vs 14.9 ms for cnn_mnist's 8x8 1->16 conv) and
  needs no ``[B, T, kh·kw·C]`` buffer. On the GPU (and TPU) each tap
  is one batched product over the whole batch. On the CPU the batch is
  walked in chunks whose taps stay in cache (`_tap_chunk`), all taps of a
  chunk in one product: XLA:CPU streams every whole-batch tap slice through
  memory. B=256, products alone, whole batch -> chunked: 3x3 32->32 at 32x32
  189 -> 70 ms; 64->64 at 16x16 140 -> 67; 32->64 at 16x16 59 -> 34; 3->32
  at 32x32 13.4 -> 8.6; 64->128 at 8x8 100 -> 55. Whole DP steps, B=256,
  medians of 2 runs in separate processes: cnn_cifar 329 -> 370 samples/s,
  resnet18 31.3 -> 34.4.
  """
  args = dict(geometry=geometry, out_hw=out_hw, norms=norms)
  return jax.lax.platform_dependent(
      a, g, cpu=lambda a, g: _tap_products_chunked(a, g, **args),
      default=lambda a, g: _tap_products_whole_batch(a, g, **args))


def _gram(rows: jax.Array) -> jax.Array:
  """Per-example Gram matrix ``R_i R_iᵀ`` of rows ``[B, T, D]``: ``[B, T, T]``."""
  return jnp.einsum("btd,bsd->bts", rows, rows)


def _layer_terms(layer: Layer, a: jax.Array, g: jax.Array):
  """Per-example squared norm ``[B]`` and the data needed for the weighted sum."""
  b = g.shape[0]
  o = layer.kernel_shape[-1]
  g_rows = g.reshape(b, -1, o)
  if layer.kind == "embed":
    return _embed_terms(layer, a, g_rows)
  bias_sq = 0.0
  bias_grads = None
  if layer.bias_path is not None:
    bias_grads = jnp.sum(g_rows, axis=1)  # [B, O]
    bias_sq = jnp.sum(jnp.square(bias_grads), axis=1)
  if layer.kind == "conv":
    ho, wo = layer.out_shape[-3:-1]
    # A folded kernel's entries are a permutation of the original's, so the
    # norms need no unfolding.
    if not layer.ghost:
      kernel_grads = _conv_kernel(
          layer, _tap_products(a, g, layer.geometry, (ho, wo), norms=False),
          (b,))
      kernel_sq = jnp.sum(jnp.square(kernel_grads.reshape(b, -1)), axis=1)
      return kernel_sq + bias_sq, ("materialised", kernel_grads, bias_grads)
    # Ghost and Gram forms (Gram implies ghost) keep the taps to recompute
    # the weighted sum once the weights are known.
    taps = list(_conv_taps(a, layer.geometry, (ho, wo)))
    if layer.gram:
      # A_i A_iᵀ over the im2col rows, summed tap by tap ([B, T, C] each).
      gram_a = sum(_gram(t.reshape(b, -1, t.shape[-1])) for t in taps)
      kernel_sq = jnp.sum(gram_a * _gram(g_rows), axis=(1, 2))
    else:
      kernel_sq = _tap_products(a, g, layer.geometry, (ho, wo), norms=True)
    return kernel_sq + bias_sq, ("conv_recompute", (taps, g), bias_grads)
  a_rows = a.reshape(b, -1, layer.kernel_shape[0])
  if layer.ghost:
    if a_rows.shape[1] == 1:
      kernel_sq = (jnp.sum(jnp.square(a_rows), axis=(1, 2))
                   * jnp.sum(jnp.square(g_rows), axis=(1, 2)))
    else:
      kernel_sq = jnp.sum(_gram(a_rows) * _gram(g_rows), axis=(1, 2))
    return kernel_sq + bias_sq, ("ghost", (a_rows, g_rows), bias_grads)
  kernel_grads = jnp.einsum("btk,bto->bko", a_rows, g_rows)
  kernel_sq = jnp.sum(jnp.square(kernel_grads.reshape(b, -1)), axis=1)
  return kernel_sq + bias_sq, ("materialised", kernel_grads, bias_grads)


def _embed_terms(layer: Layer, tokens: jax.Array, g_rows: jax.Array):
  """Embedding table ``E [V, D]`` looked up at tokens ``t_1..t_T``.

  ``∇_E loss_i = Σ_t onehot(t) g_tᵀ``, so ``‖∇_E loss_i‖² = Σ_{t,s} [t = s]
  g_t·g_s``: the Gram of the output gradients masked by token equality,
  ``T²·D`` per example without the ``[V, D]`` gradient (ghost). The weighted
  sum scatters ``w_i g_t`` into row t. When ``T² > V·D`` the per-example
  tables are formed instead. Tokens are taken modulo V like ``jnp.take``'s
  negative indices; tokens outside ``[-V, V)`` look up NaN rows in Flax and
  are dropped here.
  """
  b = g_rows.shape[0]
  v = layer.kernel_shape[0]
  tok = tokens.reshape(b, -1)
  valid = (tok >= -v) & (tok < v)
  tok = jnp.where(valid, tok % v, -1)  # -1: never equal to a real row.
  g_rows = jnp.where(valid[..., None], g_rows, 0)
  if layer.ghost:
    same = (tok[:, :, None] == tok[:, None, :]) & (tok[:, :, None] >= 0)
    return jnp.sum(jnp.where(same, _gram(g_rows), 0), axis=(1, 2)), (
        "embed_scatter", (tok, g_rows), None)
  rows = jnp.where(tok >= 0, tok, v)  # Row v is out of range: dropped.
  per_example = jax.vmap(
      lambda r, gr: jnp.zeros(layer.kernel_shape, gr.dtype).at[r].add(
          gr, mode="drop"))(rows, g_rows)
  sq = jnp.sum(jnp.square(per_example.reshape(b, -1)), axis=1)
  return sq, ("materialised", per_example, None)


def _conv_kernel(layer: Layer, stacked_taps: jax.Array, lead: tuple[int, ...]):
  """``[*lead, taps, C', O]`` tap-wise kernel (gradients) -> ``[*lead, kh, kw, C, O]``."""
  if layer.folded_strides is None:
    return stacked_taps.reshape(lead + layer.kernel_shape)
  kh2, kw2 = layer.geometry.kernel_hw
  folded = stacked_taps.reshape(lead + (kh2, kw2) + stacked_taps.shape[-2:])
  return conv_geometry.unfold_kernel(folded, layer.folded_strides)


def zero_rows(keep: jax.Array, x: jax.Array) -> jax.Array:
  """``x`` with the rows (leading axis) where ``keep`` is False set to 0."""
  return jnp.where(keep.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0)


def weighted_grad_sum(loss_fn: LossFn, params: Any, batch: Any,
                      weight_rule: Callable[[jax.Array], jax.Array],
                      mask: jax.Array | None, the_plan: Plan):
  """``(grad_sum, norms, weights, losses, aux)`` for one chunk (module docstring).

  ``loss_fn(params, batch) -> (mean loss, aux)``.

  Mixed path: leaves in ``the_plan.uncovered_paths`` (norm scales, positional
  embeddings, custom parameters) get per-example gradients in the same
  backward pass, through per-example zero offsets ``δ_i`` added to them
  under the ``vmap`` over examples (``∂loss_i/∂δ_i`` is example i's
  gradient of that leaf). Their squared norms add to the tapped layers', so
  the norms, the weights and the weighted sum equal the ``vmap`` path's.
  Memory: ``B x`` (uncovered leaves) on top of the layerwise path.

  Callers go through `jaxleak.dp.per_example.weighted_grad_sum`, which checks
  arguments, chunks the batch and builds `the_plan` with `plan`.
  """
  layers = the_plan.layers
  covered = _covered(the_plan)
  size = jax.tree.leaves(batch)[0].shape[0]
  # full_like of a batch array, not jnp.zeros: inside shard_map the taps must
  # vary over devices like the batch, or their cotangents (the per-example
  # output gradients) would be summed over devices.
  like = jax.tree.leaves(batch)[0]
  zeros = [jax.lax.full_like(like, 0, jnp.float32, (size,) + layer.out_shape)
           for layer in layers]
  leaves = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  offset_index = {path: i for i, path in enumerate(the_plan.uncovered_paths)}
  offsets = [jax.lax.full_like(like, 0, jnp.result_type(leaves[path]),
                               (size,) + tuple(jnp.shape(leaves[path])))
             for path in the_plan.uncovered_paths]

  def total_loss(taps, deltas):
    def one(p, example_taps, example_deltas, example):
      recorder = _Recorder(p, example_taps, covered)
      p = jax.tree_util.tree_map_with_path(
          lambda path, leaf: leaf + example_deltas[offset_index[path]]
          if path in offset_index else leaf, p)
      loss, aux = _one_example(loss_fn, recorder, p, example)
      if len(recorder.layers) != len(layers):
        raise RuntimeError("layerwise: the loss function called a different "
                           "set of layers than when it was planned")
      return loss, (aux, recorder.inputs)
    losses, (aux, inputs) = jax.vmap(one, in_axes=(None, 0, 0, 0))(
        params, taps, deltas, batch)
    return jnp.sum(losses), (losses, aux, inputs)

  (out_grads, offset_grads), (losses, aux, inputs) = jax.grad(
      total_loss, argnums=(0, 1), has_aux=True)(zeros, offsets)
  sq, terms = 0.0, []
  for layer, a, g in zip(layers, inputs, out_grads):
    layer_sq, term = _layer_terms(layer, a, g)
    sq = sq + layer_sq
    terms.append(term)
  for g in offset_grads:
    sq = sq + jnp.sum(jnp.square(g.reshape(size, -1).astype(jnp.float32)),
                      axis=1)
  norms = jnp.sqrt(sq)
  rule_weights = weight_rule(norms)
  if mask is not None:
    rule_weights = jnp.where(jnp.asarray(mask).astype(bool), rule_weights, 0.0)
  weights = jnp.where(jnp.isfinite(norms), rule_weights, 0.0)
  weights = jax.lax.stop_gradient(weights)
  keep = weights != 0

  paths = list(dict.fromkeys(
      [p for layer in layers for p in (layer.kernel_path, layer.bias_path)
       if p is not None] + list(the_plan.uncovered_paths)))

  def sums(sanitise: bool) -> list[jax.Array]:
    """The weighted sums; ``sanitise`` zeroes the rows of weight 0 first.

    A row's weight multiplies its data, so a weight-0 row adds 0 unless its
    data hold NaN or Inf (0 * NaN = NaN). Such a row has a non-finite norm,
    so when every norm is finite the zeroing copies are skipped (XLA:CPU,
    B=256: they were 23% of the op time of cnn_mnist's DP step, which now
    runs 7% faster).
    """
    zero = zero_rows if sanitise else (lambda keep, x: x)
    grads: dict[KeyPath, jax.Array] = {}
    for layer, (form, kernel_data, bias_grads) in zip(layers, terms):
      if form == "materialised":
        kernel_sum = jnp.tensordot(weights, zero(keep, kernel_data), axes=1)
      elif form == "conv_recompute":
        taps, g = kernel_data
        weighted_g = zero(keep, g) * weights.reshape((-1,) + (1,) * (g.ndim - 1))
        kernel_sum = _conv_kernel(layer, jnp.stack(
            [jnp.einsum("b...c,b...o->co", zero(keep, t), weighted_g)
             for t in taps]), ())
      elif form == "embed_scatter":
        tok, g_rows = kernel_data
        weighted_g = zero(keep, g_rows) * weights[:, None, None]
        rows = jnp.where(tok >= 0, tok, layer.kernel_shape[0]).reshape(-1)
        kernel_sum = jnp.zeros(layer.kernel_shape, weighted_g.dtype).at[rows].add(
            weighted_g.reshape(-1, layer.kernel_shape[-1]), mode="drop")
      else:
        a_rows, g_rows = kernel_data
        weighted_g = zero(keep, g_rows) * weights[:, None, None]
        kernel_sum = jnp.einsum("btk,bto->ko", zero(keep, a_rows), weighted_g)
      grads[layer.kernel_path] = kernel_sum.reshape(layer.kernel_shape)
      if layer.bias_path is not None:
        grads[layer.bias_path] = jnp.tensordot(
            weights, zero(keep, bias_grads), axes=1)
    for path, g in zip(the_plan.uncovered_paths, offset_grads):
      grads[path] = jnp.tensordot(weights.astype(g.dtype), zero(keep, g),
                                  axes=1)
    return [grads[p] for p in paths]  # Key paths cannot be pytree dict keys.

  grads = dict(zip(paths, jax.lax.cond(jnp.all(jnp.isfinite(norms)),
                                       lambda: sums(False), lambda: sums(True))))

  def leaf_grad(path, leaf):
    if path in grads:
      return grads[path].astype(jnp.result_type(leaf))
    return jnp.zeros_like(leaf)  # Integer leaves (never differentiated).
  grad_sum = jax.tree_util.tree_map_with_path(leaf_grad, params)
  return grad_sum, norms, weights, losses, aux
