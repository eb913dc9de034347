"""Model-agnostic re-initialisation of kernels and biases, and parameter counts.

The schemes follow the initialisation study of I²F (Zhang et al., NeurIPS 2023),
which compares uniform, normal, Kaiming and Xavier initialisations for gradient
inversion:

=======  ====================================================  ============
scheme   kernels                                              biases
=======  ====================================================  ============
default  the model's own default (see below)                  model's
uniform  U(-0.5, 0.5)                                         U(-0.5, 0.5)
normal   N(0, 0.5^2)                                          N(0, 0.5^2)
kaiming  He normal, fan-in: N(0, 2 / fan_in), untruncated     0
xavier   Glorot uniform: U(-a, a), a = sqrt(6 / (in + out))   0
lecun    truncated normal, variance 1 / fan_in (Flax's)       0
=======  ====================================================  ============

"default" means "uniform" for ``lenet`` (as in DLG and I²F) and "lecun" (Flax's
default) for every other registered model; ``reinit(params, "default", key)``
returns `params` unchanged.

"uniform" and "normal" use the constants of the I²F reference code (its normal
scheme draws weights from N(0, 0.5^2); it intended the same for biases, which
is what we do). "kaiming" and "xavier" are the textbook definitions with zero
biases; the I²F code instead uses Kaiming-*uniform* with gain 1 and U(-0.5, 0.5)
biases for those two, so absolute numbers for those rows are not comparable.

Fans follow the PyTorch convention for a Flax kernel of shape
(*receptive_field, in, out): fan_in = prod(receptive_field) * in and
fan_out = prod(receptive_field) * out.

Only a module's "kernel" and the "bias" that sits next to a kernel are
re-drawn. Normalisation layers (which hold "scale" and "bias" but no kernel)
keep their values (1 and 0 at initialisation), and other collections
(``batch_stats``) are left untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxleak._src import tree_util
from jaxleak._src import validate

INIT_SCHEMES: tuple[str, ...] = (
    "default", "uniform", "normal", "kaiming", "xavier", "lecun")

# std of N(0, 1) truncated to [-2, 2]; dividing by it restores unit variance
# (the constant jax.nn.initializers.variance_scaling uses).
_TRUNC_STD = 0.87962566103423978
_NORMAL_STD = 0.5


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
  """(fan_in, fan_out) of a Flax kernel shape, PyTorch convention."""
  if len(shape) < 2:
    raise ValueError(f"fans: kernel must have rank >= 2, got shape {shape}")
  receptive = math.prod(shape[:-2])
  return receptive * shape[-2], receptive * shape[-1]


# For each scheme: the base distribution of one shared draw, and whether
# biases come from it too (otherwise they are zeroed).
_BASE = {
    "uniform": ("uniform", True),
    "normal": ("normal", True),
    "kaiming": ("normal", False),
    "xavier": ("uniform", False),
    "lecun": ("truncated_normal", False),
}


def _scale(scheme: str, name: str, shape: tuple[int, ...]) -> float:
  """Multiplier that turns the base draw into the scheme's distribution."""
  if scheme == "uniform":
    return 0.5  # U(-1, 1) -> U(-0.5, 0.5)
  if scheme == "normal":
    return _NORMAL_STD
  fan_in, fan_out = fans(shape) if name == "kernel" else (1, 1)
  if scheme == "kaiming":
    return math.sqrt(2.0 / fan_in)
  if scheme == "xavier":
    return math.sqrt(6.0 / (fan_in + fan_out))
  return math.sqrt(1.0 / fan_in) / _TRUNC_STD  # lecun


def _leaf_name(path: tuple[Any, ...]) -> str | None:
  last = path[-1] if path else None
  return getattr(last, "key", None)


@functools.partial(jax.jit, static_argnames=("base", "total", "dtype"))
def _draw(key: jax.Array, base: str, total: int, dtype: Any) -> jax.Array:
  if base == "uniform":
    return jax.random.uniform(key, (total,), dtype, -1.0, 1.0)
  if base == "normal":
    return jax.random.normal(key, (total,), dtype)
  return jax.random.truncated_normal(key, -2.0, 2.0, (total,), dtype)


def _bucket(n: int) -> int:
  return max(1024, 1 << max(n - 1, 0).bit_length())


def _is_tracer(x: Any) -> bool:
  return isinstance(x, jax.core.Tracer)


def _reinit_collection(collection: Any, scheme: str, key: jax.Array) -> Any:
  leaves, treedef = jax.tree_util.tree_flatten_with_path(collection)
  kernel_parents = {path[:-1] for path, _ in leaves
                    if _leaf_name(path) == "kernel"}
  base, draw_biases = _BASE[scheme]

  # (leaf index, scale or None for "set to zero"), in sorted-path order.
  plan: list[tuple[int, float | None]] = []
  for i, (path, leaf) in enumerate(leaves):
    name = _leaf_name(path)
    if name == "kernel" or (name == "bias" and path[:-1] in kernel_parents):
      drawn = name == "kernel" or draw_biases
      plan.append((i, _scale(scheme, name, tuple(np.shape(leaf)))
                   if drawn else None))

  drawn_leaves = [leaves[i][1] for i, scale in plan if scale is not None]
  total = sum(math.prod(np.shape(leaf)) for leaf in drawn_leaves)
  dtype = (np.dtype(jnp.result_type(*drawn_leaves)) if drawn_leaves
           else np.dtype(np.float32))
  # One draw for all leaves: XLA compiles one PRNG kernel per draw, and on CPU
  # that compilation dominated model creation (seconds per layer). The draw
  # size is rounded up to a power of two so that models of similar size reuse
  # the compiled kernel; only the first `total` values are used.
  noise = _draw(key, base, _bucket(total), dtype)

  # Outside of a trace, slice on the host: one compiled program in total,
  # instead of one small kernel per leaf. Inside a trace, slice in the graph.
  concrete = not (_is_tracer(key) or any(_is_tracer(l) for _, l in leaves))
  xp = np if concrete else jnp
  if concrete:
    noise = np.asarray(noise)

  new = [leaf for _, leaf in leaves]
  offset = 0
  for i, scale in plan:
    leaf = leaves[i][1]
    shape = tuple(np.shape(leaf))
    if scale is None:
      value = xp.zeros(shape, leaf.dtype)
    else:
      size = math.prod(shape)
      value = (scale * noise[offset:offset + size].reshape(shape)).astype(
          leaf.dtype)
      offset += size
    if concrete:
      sharding = getattr(leaf, "sharding", None)
      value = jax.device_put(value, sharding) if sharding else jnp.asarray(value)
    new[i] = value
  return jax.tree.unflatten(treedef, new)


def reinit(params: Any, scheme: str, key: jax.Array) -> Any:
  """Re-draws every kernel (and its bias) of a parameter tree with `scheme`.

  Pure: returns a new tree with the same structure, shapes and dtypes; the
  input is not modified. Works for any Flax model, because it only looks for
  sub-dicts holding a "kernel" leaf. Deterministic in `key` for a given tree
  structure (leaves are filled in sorted-path order from one random draw).

  Args:
    params: Flax variables dict ({"params": ..., possibly "batch_stats": ...})
      or a bare "params" collection.
    scheme: one of INIT_SCHEMES. "default" returns `params` unchanged (the
      model's default is only known to `create`).
    key: PRNG key.

  Returns:
    The re-initialised tree, of the same kind as `params`.

  Raises:
    ValueError: if `scheme` is unknown.
    TypeError: if `params` is not a mapping.
  """
  validate.check_choice(scheme, "scheme", INIT_SCHEMES, fn="reinit")
  if not isinstance(params, Mapping):
    raise TypeError(
        "reinit: argument 'params' must be a Flax variables dict or a 'params' "
        f"collection (a mapping), got {type(params).__name__}")
  if scheme == "default":
    return params
  if "params" in params and isinstance(params["params"], Mapping):
    return {**params, "params": _reinit_collection(params["params"], scheme, key)}
  return _reinit_collection(params, scheme, key)


param_count = tree_util.param_count
"""Number of trainable scalars (``jaxleak._src.tree_util.param_count``)."""