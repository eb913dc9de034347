"""Full-batch gradients of a fixed example set, optionally sharded with shard_map.

`SubsetGradient` holds a subset of the training set (e.g. the retained set
D \\ R) placed once on the devices, and returns the *sum* of per-example loss
gradients at any flat parameter vector:

  G(w) = sum_{i in subset} grad_w l(f_w(x_i), y_i).

With a ``("data",)`` mesh the subset is padded (mask 0) to a multiple of
``devices * chunk_size`` and split over the devices; inside `jax.shard_map`
each device sums the gradients of its examples chunk by chunk (bounding
activation memory), and one ``lax.psum`` adds the device sums. The params are
cast to device-varying first: without the cast, differentiating with respect
to a replicated value inserts an implicit psum, and the explicit one would
double-count (see `jaxleak.sharding.device_varying`).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxleak import sharding as sharding_lib
from jaxleak.unlearning import _sgd

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def _local_sum(grad_fn, w, x, y, m, chunk):
  """Sums grads over [k * chunk] examples in k sequential chunks."""
  k = x.shape[0] // chunk
  xs = x.reshape((k, chunk) + x.shape[1:])
  ys = y.reshape((k, chunk))
  ms = m.reshape((k, chunk))

  def body(acc, inputs):
    xc, yc, mc = inputs
    return acc + grad_fn(w, xc, yc, mc), None

  total, _ = jax.lax.scan(body, jnp.zeros_like(w), (xs, ys, ms))
  return total


def grad_sum_fn(apply_fn: ApplyFn, unravel: Callable, chunk: int,
                mesh: jax.sharding.Mesh | None = None
                ) -> Callable[..., jax.Array]:
  """Returns the traceable `f(w, x, y, mask) -> sum_i mask_i grad l_i(w)`.

  Without a mesh, `x` is processed in sequential chunks of `chunk` examples;
  with one, `x`, `y`, `mask` must be sharded over its ``"data"`` axis (each
  device's share a multiple of `chunk`) and `w` replicated; the device sums
  are added by one ``lax.psum``.
  """
  grad_fn = _sgd.flat_loss_grad(apply_fn, unravel)
  if mesh is None:
    return lambda w, x, y, m: _local_sum(grad_fn, w, x, y, m, chunk)
  axis = sharding_lib.DATA_AXIS

  def per_device(w, x, y, m):
    # Local gradients only: see the module docstring.
    w = sharding_lib.device_varying(w, axis)
    return jax.lax.psum(_local_sum(grad_fn, w, x, y, m, chunk), axis)

  return jax.shard_map(per_device, mesh=mesh,
                       in_specs=(P(), P(axis), P(axis), P(axis)),
                       out_specs=P())


@functools.partial(jax.jit,
                   static_argnames=("apply_fn", "unravel", "chunk", "mesh"))
def _grad_sum(apply_fn, unravel, w, x, y, m, chunk, mesh):
  return grad_sum_fn(apply_fn, unravel, chunk, mesh)(w, x, y, m)


class SubsetGradient:
  """Sum of loss gradients over a fixed example subset, at any flat params.

  Args:
    apply_fn: the model.
    unravel: flat vector -> params pytree (from `ravel_pytree`).
    images, labels: the examples of the subset (host arrays).
    mesh: optional ``("data",)`` mesh to shard the examples over.
    chunk_size: examples per sequential chunk on each device.
  """

  def __init__(self, apply_fn: ApplyFn, unravel: Callable, images: np.ndarray,
               labels: np.ndarray, *, mesh: jax.sharding.Mesh | None = None,
               chunk_size: int = 128):
    self.apply_fn = apply_fn
    self.unravel = unravel
    self.mesh = mesh
    self.count = int(len(labels))
    devices = 1 if mesh is None else int(mesh.shape[sharding_lib.DATA_AXIS])
    per_device = -(-max(self.count, 1) // devices)
    self.chunk = max(1, min(int(chunk_size), per_device))
    # Padded size: every device holds the same whole number of chunks.
    k = -(-per_device // self.chunk)
    size = devices * k * self.chunk
    x = _sgd.pad_to(np.asarray(images, np.float32), size)
    y = _sgd.pad_to(np.asarray(labels, np.int32), size)
    m = _sgd.pad_to(np.ones(self.count, np.float32), size)
    if mesh is None:
      self.arrays = (jnp.asarray(x), jnp.asarray(y), jnp.asarray(m))
    else:
      self.arrays = sharding_lib.shard_batch(mesh, (x, y, m))

  def __call__(self, w: jax.Array) -> jax.Array:
    """Returns sum_i grad l_i(w) as a flat vector (zeros for an empty set)."""
    if self.count == 0:
      return jnp.zeros_like(w)
    x, y, m = self.arrays
    if self.mesh is None:
      return _grad_sum(self.apply_fn, self.unravel, w, x, y, m, self.chunk,
                       None)
    out = _grad_sum(self.apply_fn, self.unravel, self.replicate(w), x, y, m,
                    self.chunk, self.mesh)
    # Back where the caller's vector lives, so host-side updates mix freely.
    return sharding_lib.to_local(out, like=w)

  def replicate(self, tree: Any) -> Any:
    """Places `tree` replicated on the mesh (unchanged without a mesh)."""
    if self.mesh is None:
      return tree
    return sharding_lib.replicate(self.mesh, tree)

  def mean(self, w: jax.Array) -> jax.Array:
    """The mean loss gradient over the subset."""
    return self(w) / max(self.count, 1)
