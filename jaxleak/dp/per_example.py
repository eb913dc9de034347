"""Per-example gradients, their norms, and weighted gradient sums.

Conventions:
  * ``loss_fn(params, batch) -> scalar`` is the ordinary *mean* loss over a
    batch, the same function non-private training uses. ``batch`` is a pytree
    of arrays sharing a leading batch axis (e.g. ``(images, labels)``).
  * Per-example quantities evaluate ``loss_fn`` on one example at a time, as a
    batch of size 1, so models that expect NHWC batches work unchanged.
    Cross-example layers (BatchNorm in train mode) are therefore evaluated per
    example; use GroupNorm models for DP.

Three ways to get ``sum_i w(||g_i||) g_i`` (every rule in `jaxleak.dp.weights`
is a per-example function of the gradient norm):

  * ``"layerwise"``: one forward and one backward pass with taps on every
    Dense/Conv/Embed output; per-example norms and the weighted sum come from
    the layer inputs and output gradients (`jaxleak.dp.layerwise`:
    book-keeping with mixed ghost norms). Needs a Flax model made of
    Dense/Conv/Embed layers.
  * ``"mixed"``: the layerwise pass for the layers it covers, plus
    per-example gradients (inside the same ``vmap`` and backward pass) for the
    parameters no tap covers: norm scales and biases, positional embeddings,
    class tokens, custom parameters. Any Flax model (linen, or nnx through
    ``nnx.split``/``nnx.merge``, whose parameters all take the per-example
    part).

  * ``"vmap"``: materialise per-example gradients with ``vmap(grad)``
    (``B x params`` memory; ``microbatch_size`` bounds it with ``lax.map``),
    weight them and sum.
  * ``"two_pass"``: pass 1 computes per-example norms chunk by chunk and keeps
    only the norms; pass 2 is one ordinary backward pass of
    ``sum_i w_i * loss_i`` with the weights held constant. Memory is that of
    a normal training step plus one chunk of per-example gradients.

All give the same sum up to float rounding (tested). ``"auto"`` (the default)
takes ``"layerwise"`` when it covers every parameter, ``"mixed"`` when it
covers some, and ``"vmap"`` when no Dense/Conv/Embed layer is called: in
``benchmarks/dp_throughput.py`` on 2 CPU cores, layerwise is the fastest
path on both benchmark CNNs.
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxleak._src import validate
from jaxleak.dp import layerwise

__all__ = (
    "per_example_grads",
    "per_example_losses",
    "global_norms",
    "per_example_norms",
    "weighted_sum",
    "weighted_grad_sum",
    "WeightedGradSum",
    "PATHS",
    "private_grad",
)

LossFn = Callable[[Any, Any], jax.Array]
PATHS = ("auto", "layerwise", "mixed", "vmap", "two_pass")


class WeightedGradSum(NamedTuple):
  """Result of `weighted_grad_sum`.

  Attributes:
    grad_sum: ``sum_i weights[i] * g_i`` (a params-shaped pytree, no noise).
    norms: ``[B]`` per-example gradient norms (NaN/Inf for broken examples).
    weights: ``[B]`` weights used (0 for padding and non-finite examples).
    losses: ``[B]`` per-example losses, free by-products for logging; entries
      of rows with weight 0 (padding, skipped) are unspecified, so average
      them with the mask.
    aux: with ``has_aux=True``, the loss function's auxiliary output for each
      example (evaluated as a batch of 1), stacked on a leading ``[B]`` axis;
      e.g. logits ``[B, 1, classes]`` for accuracy without a second forward
      pass. None otherwise.
  """
  grad_sum: Any
  norms: jax.Array
  weights: jax.Array
  losses: jax.Array
  aux: Any = None


def _batch_size(batch: Any, fn: str) -> int:
  leaves = jax.tree.leaves(batch)
  if not leaves:
    raise ValueError(f"{fn}: argument 'batch' has no arrays")
  sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else -1 for x in leaves}
  if len(sizes) != 1 or -1 in sizes:
    raise ValueError(
        f"{fn}: every array in argument 'batch' needs the same leading batch "
        f"axis; got leading sizes {sorted(sizes)}")
  return sizes.pop()


def _single_example_fn(loss_fn: LossFn) -> Callable[[Any, Any], jax.Array]:
  def loss_one(params, example):
    return loss_fn(params, jax.tree.map(lambda a: a[None], example))
  return loss_one


def _with_aux(loss_fn: LossFn, has_aux: bool) -> LossFn:
  """``loss_fn`` as a function returning ``(loss, aux)`` (aux None if absent)."""
  if has_aux:
    return loss_fn
  return lambda params, batch: (loss_fn(params, batch), None)


def _split_chunks(batch, microbatch_size, batch_size, fn_name):
  """``batch`` reshaped to ``[B / microbatch_size, microbatch_size, ...]``."""
  validate.check_positive(microbatch_size, "microbatch_size", fn=fn_name)
  if batch_size % microbatch_size:
    raise ValueError(
        f"{fn_name}: argument 'microbatch_size'={microbatch_size} must divide the "
        f"batch size {batch_size}")
  n_chunks = batch_size // microbatch_size
  return jax.tree.map(
      lambda a: a.reshape((n_chunks, microbatch_size) + a.shape[1:]), batch)


def _merge_chunks(out, batch_size):
  """Inverse of `_split_chunks` for per-example outputs of ``lax.map``."""
  return jax.tree.map(lambda a: a.reshape((batch_size,) + a.shape[2:]), out)


def _chunked(fn, batch, microbatch_size, batch_size, fn_name):
  """Applies ``fn(chunk)`` over chunks of `microbatch_size` with ``lax.map``."""
  if microbatch_size is None or microbatch_size >= batch_size:
    return fn(batch)
  chunks = _split_chunks(batch, microbatch_size, batch_size, fn_name)
  return _merge_chunks(jax.lax.map(fn, chunks), batch_size)


def per_example_grads(loss_fn: LossFn, params: Any, batch: Any, *,
                      microbatch_size: int | None = None) -> Any:
  """Gradients of `loss_fn` for each example: leaves get a leading batch axis.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` (mean loss over a batch).
    params: the parameter pytree.
    batch: pytree of arrays with a shared leading batch axis of size B.
    microbatch_size: if given (must divide B), compute `microbatch_size`
      examples at a time with ``lax.map`` to bound peak memory.

  Returns:
    A pytree like `params` whose leaves have shape ``[B, *leaf.shape]``.
  """
  b = _batch_size(batch, "per_example_grads")
  grad_one = jax.grad(_single_example_fn(loss_fn))
  vmapped = jax.vmap(grad_one, in_axes=(None, 0))
  return _chunked(lambda chunk: vmapped(params, chunk), batch, microbatch_size,
                  b, "per_example_grads")


def per_example_losses(loss_fn: LossFn, params: Any, batch: Any) -> jax.Array:
  """``[B]`` vector of each example's loss (batched forward pass)."""
  return jax.vmap(_single_example_fn(loss_fn), in_axes=(None, 0))(params, batch)


def global_norms(per_example: Any) -> jax.Array:
  """``[B]`` global L2 norms over all leaves of per-example gradients."""
  leaves = jax.tree.leaves(per_example)
  sq = sum(jnp.sum(jnp.square(x.reshape(x.shape[0], -1).astype(jnp.float32)),
                   axis=1) for x in leaves)
  return jnp.sqrt(sq)


def per_example_norms(loss_fn: LossFn, params: Any, batch: Any, *,
                      microbatch_size: int | None = None) -> jax.Array:
  """``[B]`` per-example gradient norms, keeping only one chunk of gradients."""
  b = _batch_size(batch, "per_example_norms")
  grad_one = jax.grad(_single_example_fn(loss_fn))
  norms_of_chunk = lambda chunk: global_norms(
      jax.vmap(grad_one, in_axes=(None, 0))(params, chunk))
  return _chunked(norms_of_chunk, batch, microbatch_size, b, "per_example_norms")


def weighted_sum(per_example: Any, weights: jax.Array) -> Any:
  """``sum_i weights[i] * g_i`` over the leading axis; zero-weight rows never
  contribute, even if they hold NaN or Inf."""
  # Always zeroed: skipping the copies behind a lax.cond on finite norms (as
  # layerwise does) made cnn_mnist's vmap step 16% slower on XLA:CPU.
  def reduce(g):
    g = layerwise.zero_rows(weights != 0, g)
    return jnp.tensordot(weights.astype(g.dtype), g, axes=1)
  return jax.tree.map(reduce, per_example)


def weighted_grad_sum(loss_fn: LossFn, params: Any, batch: Any,
                      weight_rule: Callable[[jax.Array], jax.Array], *,
                      mask: jax.Array | None = None, path: str = "auto",
                      microbatch_size: int | None = None,
                      has_aux: bool = False) -> WeightedGradSum:
  """Computes ``sum_i mask_i w(||g_i||) g_i`` without noise.

  This is the "clipped sum" of jax_privacy's contract: feed it to
  `jaxleak.dp.gaussian_privatizer` (or any privatiser) to add noise.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` mean loss.
    params: parameters.
    batch: pytree with a leading batch axis.
    weight_rule: ``rule(norms) -> weights`` (from `jaxleak.dp.weights`).
    mask: optional ``[B]`` bool/0-1 array; padded rows (False) contribute 0.
    path: ``"auto"`` (default: ``"layerwise"`` if every parameter is a
      Dense/Conv/Embed kernel or bias, ``"mixed"`` if some are, else
      ``"vmap"``), ``"layerwise"`` (raises, naming the uncovered parameters,
      if not applicable), ``"mixed"``, ``"vmap"``, or ``"two_pass"`` (never
      holds a ``B x params`` buffer; for models whose per-example gradients
      do not fit).
    microbatch_size: chunk size for per-example work (must divide B).
    has_aux: `loss_fn` returns ``(loss, aux)``; aux comes back per example.

  Returns:
    A `WeightedGradSum` ``(grad_sum, norms, weights, losses, aux)``;
    non-finite norms and padded rows have weight 0.
  """
  validate.check_choice(path, "path", PATHS, fn="weighted_grad_sum")
  b = _batch_size(batch, "weighted_grad_sum")
  if mask is not None:
    validate.check_shape(mask, "mask", (b,), fn="weighted_grad_sum")
  aux_loss = _with_aux(loss_fn, has_aux)
  if path in ("auto", "layerwise", "mixed"):
    the_plan = layerwise.plan(aux_loss, params, batch)
    if the_plan.applicable or path == "mixed" or (path == "auto"
                                                  and the_plan.layers):
      return _layerwise(aux_loss, params, batch, weight_rule, mask, the_plan,
                        microbatch_size, b)
    if path == "layerwise":
      raise ValueError(
          "weighted_grad_sum: path='layerwise' needs every parameter to be the "
          "kernel or bias of one flax Dense/Conv/Embed call; not covered: "
          + (", ".join(the_plan.uncovered)
             or "no Dense/Conv/Embed layer was called")
          + ". Use path='mixed' (or 'auto').")
    path = "vmap"
  single = _single_example_fn(aux_loss)
  if path == "vmap":
    value_and_grad = jax.vmap(jax.value_and_grad(single, has_aux=True),
                              in_axes=(None, 0))
    (losses, aux), grads = _chunked(
        lambda chunk: value_and_grad(params, chunk), batch, microbatch_size, b,
        "weighted_grad_sum")
    norms = global_norms(grads)
    weights = _masked(weight_rule(norms), mask)
    return WeightedGradSum(weighted_sum(grads, weights), norms, weights, losses,
                           aux)
  norms = per_example_norms(lambda p, x: aux_loss(p, x)[0], params, batch,
                            microbatch_size=microbatch_size)
  weights = jax.lax.stop_gradient(_masked(weight_rule(norms), mask))
  # A NaN input row would still poison pass 2's backward pass (0 * NaN), so
  # rows with weight 0 are replaced by zeros before the forward pass.
  keep = weights != 0
  safe_batch = jax.tree.map(
      lambda a: layerwise.zero_rows(keep, a)
      if jnp.issubdtype(a.dtype, jnp.inexact) else a, batch)

  def weighted_loss(p):
    losses, aux = jax.vmap(single, in_axes=(None, 0))(p, safe_batch)
    return jnp.sum(jnp.where(keep, weights * losses, 0.0)), (losses, aux)

  grad_sum, (losses, aux) = jax.grad(weighted_loss, has_aux=True)(params)
  return WeightedGradSum(grad_sum, norms, weights, losses, aux)


def private_grad(loss_fn: LossFn, weight_rule: Callable[[jax.Array], jax.Array],
                 *, path: str = "auto", microbatch_size: int | None = None,
                 has_aux: bool = False) -> Callable[..., WeightedGradSum]:
  """``jax.value_and_grad`` for DP: ``fn(params, batch, mask=None) -> WeightedGradSum``.

  The returned function computes the noise-free weighted sum
  ``sum_i mask_i w(||g_i||) g_i`` of `weighted_grad_sum` on the fast path
  (`path="auto"`: layerwise or mixed for Flax models) together with the
  per-example losses, norms and weights. Guarantee: one example moves
  ``grad_sum`` by at most ``weight_rule.sensitivity`` in L2 norm, so adding
  ``N(0, (sigma * sensitivity)^2 I)`` (`gaussian_privatizer`) is the
  Gaussian mechanism with noise multiplier sigma.

  Example::

    grad_fn = dp.private_grad(loss_fn, dp.clip(1.0))
    out = grad_fn(params, (images, labels), mask=mask)
    updates, state = privatizer.update(out.grad_sum, state)
  """
  validate.check_choice(path, "path", PATHS, fn="private_grad")
  if not callable(loss_fn):
    raise TypeError(f"private_grad: argument 'loss_fn' must be callable, got "
                    f"{loss_fn!r}")
  if not callable(weight_rule) or not hasattr(weight_rule, "sensitivity"):
    raise TypeError("private_grad: argument 'weight_rule' must be a jaxleak.dp "
                    f"weight rule with a .sensitivity, got {weight_rule!r}")

  def grad_fn(params, batch, mask=None) -> WeightedGradSum:
    return weighted_grad_sum(loss_fn, params, batch, weight_rule, mask=mask,
                             path=path, microbatch_size=microbatch_size,
                             has_aux=has_aux)
  return grad_fn


def _layerwise(loss_fn, params, batch, weight_rule, mask, the_plan,
               microbatch_size, batch_size) -> WeightedGradSum:
  """Layerwise path, chunked with ``lax.map`` when `microbatch_size` is set."""
  mask = jnp.ones(batch_size, bool) if mask is None else jnp.asarray(mask)
  # Layer outputs per example, as the float32 taps `layerwise` adds to them.
  example_bytes = sum(math.prod(layer.out_shape) * 4 for layer in the_plan.layers)
  def one_part(part):
    sub_batch, sub_mask = part
    return layerwise.weighted_grad_sum(loss_fn, params, sub_batch, weight_rule,
                                       sub_mask, the_plan)
  def chunk_fn(chunk):
    size = jax.tree.leaves(chunk)[0].shape[0]
    n = _independent_parts(size, example_bytes)
    if n == 1:
      return one_part(chunk)
    parts = [one_part(jax.tree.map(lambda a: a[i * size // n:(i + 1) * size // n],
                                   chunk)) for i in range(n)]
    sums, *per_example = zip(*parts)
    return (jax.tree.map(lambda *s: sum(s), *sums),
            *(jax.tree.map(lambda *a: jnp.concatenate(a), *field)
              for field in per_example))
  if microbatch_size is None:
    microbatch_size = _cpu_loop_chunk(batch_size, example_bytes, the_plan)
  if microbatch_size is None or microbatch_size >= batch_size:
    return WeightedGradSum(*chunk_fn((batch, mask)))
  chunks = _split_chunks((batch, mask), microbatch_size, batch_size,
                         "weighted_grad_sum")
  sums, *per_example = jax.lax.map(chunk_fn, chunks)
  # The grad sums of the chunks add up; everything else is per example.
  return WeightedGradSum(jax.tree.map(lambda s: jnp.sum(s, axis=0), sums),
                         *_merge_chunks(per_example, batch_size))


# Most independent sub-batches a layerwise chunk is split into on XLA:CPU, and
# the least each one holds: examples, and bytes of layer outputs.
CPU_INDEPENDENT_PARTS = 16
MIN_PART_EXAMPLES = 16
MIN_PART_BYTES = 2**20


def _independent_parts(size: int, example_bytes: int) -> int:
  """How many independent sub-batches a layerwise chunk of `size` is split into.

  XLA:CPU runs independent operations concurrently, one per core, while one
  small operation parallelises poorly over cores; smaller sub-batches also
  stay in cache. But each part is its own copy of the per-example graph
  (compile time and the compiler's memory grow with the count: the ViT's
  compilation peaks at 743 MB with 16 parts, 489 MB with 4) and tiny parts
  pay per-operation overhead. So: as many parts as divide `size` evenly, up to 16, each with
  at least 16 examples and 1 MB of layer outputs (`example_bytes` per
  example). Measured on 2 cores, whole DP steps (ms, medians), 4 / 8 / 16
  parts at B=256: cnn_cifar (449 KB per example) 699 / 648 / 616; ViT (244
  KB) 260 / 243 / 236; text transformer (240 KB) 259 / - / 243; resnet18
  7822 / 7469 / 7440; cnn_mnist (16 KB) 15.6 / 17.3 / 18.5, where the rule
  keeps 4 (earlier: 1 / 2 / 4 parts 7337 / 7633 / 8136 samples/s). Results
  are unchanged, and so, within 12%, is the step's temporary memory (ViT:
  256 MB with 16 parts, 286 MB with 4). Other backends (one stream of large
  kernels) gain nothing and get 1. A batch of more than 4 parts is walked
  in loop chunks of 4 parts instead where the model allows it
  (`_cpu_loop_chunk`).
  """
  if jax.default_backend() != "cpu":
    return 1
  n = CPU_INDEPENDENT_PARTS
  while n > 1 and (size % n or not _part_fits(size // n, example_bytes)):
    n //= 2
  return n


def _part_fits(examples: int, example_bytes: int) -> bool:
  """Whether a part of `examples` meets the least size of a part."""
  return (examples >= MIN_PART_EXAMPLES
          and examples * example_bytes >= MIN_PART_BYTES)


# Independent parts per loop step when `_cpu_loop_chunk` walks a batch.
CPU_LOOP_PARTS = 4


def _cpu_loop_chunk(size: int, example_bytes: int,
                    the_plan: layerwise.Plan) -> int | None:
  """Examples per ``lax.map`` step for a layerwise batch on XLA:CPU, or None.

  A batch that `_independent_parts` would split into more than
  `CPU_LOOP_PARTS` parts is instead walked in a loop of chunks of
  `CPU_LOOP_PARTS` parts of the smallest size its rules allow: one copy of
  the per-example graph per part of a chunk rather than per part of the
  batch, and a working set of one chunk. ViT, 2 cores, ms per DP sum
  (medians): B=256, 16 parts of 16 -> 4 chunks of 4 parts of 16: 184 ->
  141, compilation 17 -> 5 s, peak RSS 948-1020 -> 602 MB; text transformer
  170 -> 125; B=1024, chunks of 64 / 128 / 256 examples: 536 / 541 / 577
  (16 unrolled parts of 64: 938); cnn_cifar, B=256: 568 -> 532, compilation
  10.6 -> 4.4 s. Not when a convolution past the first layer is one the
  recorder leaves to Flax (strided and not foldable, or with a dtype or
  precision): inside a loop body XLA:CPU runs autodiff's input gradient of
  a convolution without YNNPACK, 20x slower (cnn_cifar, B=256: 587 -> 1817
  ms), which `layerwise.stride1_conv` avoids.
  """
  n = _independent_parts(size, example_bytes)
  if n <= CPU_LOOP_PARTS or any(layer.kind == "conv" and not layer.own_conv
                                for layer in the_plan.layers[1:]):
    return None
  part = size // n  # n >= 8 divides size, so 4 * part / 2^j divides it too.
  while part % 2 == 0 and _part_fits(part // 2, example_bytes):
    part //= 2
  return CPU_LOOP_PARTS * part


def _masked(weights: jax.Array, mask: jax.Array | None) -> jax.Array:
  if mask is None:
    return weights
  return jnp.where(jnp.asarray(mask).astype(bool), weights, 0.0)
