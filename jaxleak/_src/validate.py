"""Input validation with errors that name the offending argument.

Every public jaxleak function validates its inputs through these helpers so
that a bad call fails early, on the host, with a message of the form
``"<function>: argument '<name>' ... (got ...)"``. The checks run on concrete
values only; inside ``jax.jit`` they are skipped for traced values, because a
traced value cannot be inspected without a host sync.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
import inspect
import math
from typing import Any

import jax
import numpy as np


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _where(fn_name: str | None) -> str:
  return f"{fn_name}: " if fn_name else ""


def _as_float(value: Any, name: str, fn: str | None) -> float | None:
  """`value` as a float; None for a traced value (checked when concrete)."""
  if not _is_concrete(value):
    return None
  try:
    return float(value)
  except (TypeError, ValueError):
    raise TypeError(
        f"{_where(fn)}argument '{name}' must be a number, got {value!r}"
    ) from None


def check_positive(value: Any, name: str, *, fn: str | None = None,
                   allow_zero: bool = False) -> None:
  """Raises ValueError unless `value` is a finite number > 0 (or >= 0)."""
  v = _as_float(value, name, fn)
  if v is None:
    return
  ok = v >= 0 if allow_zero else v > 0
  if not math.isfinite(v) or not ok:
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(
        f"{_where(fn)}argument '{name}' must be finite and {bound}, got {value!r}"
    )


def check_in_range(value: Any, name: str, low: float, high: float, *,
                   fn: str | None = None, inclusive: tuple[bool, bool] = (True, True)
                   ) -> None:
  """Raises ValueError unless low <= value <= high (bounds per `inclusive`)."""
  if not _is_concrete(value):
    return
  v = float(value)
  lo_ok = v >= low if inclusive[0] else v > low
  hi_ok = v <= high if inclusive[1] else v < high
  if not (math.isfinite(v) and lo_ok and hi_ok):
    lb = "[" if inclusive[0] else "("
    rb = "]" if inclusive[1] else ")"
    raise ValueError(
        f"{_where(fn)}argument '{name}' must be in {lb}{low}, {high}{rb}, got {value!r}"
    )


def check_choice(value: Any, name: str, choices: Sequence[Any], *,
                 fn: str | None = None) -> None:
  """Raises ValueError unless `value` is one of `choices`, listing them."""
  if value not in choices:
    listed = ", ".join(repr(c) for c in choices)
    raise ValueError(
        f"{_where(fn)}argument '{name}' must be one of {listed}; got {value!r}"
    )


def check_rank(x: Any, name: str, rank: int | Sequence[int], *,
               fn: str | None = None, what: str | None = None) -> None:
  """Raises ValueError unless `x.ndim` is `rank` (or one of several ranks)."""
  ranks = (rank,) if isinstance(rank, int) else tuple(rank)
  ndim = np.ndim(x)
  if ndim not in ranks:
    expect = " or ".join(str(r) for r in ranks)
    extra = f" ({what})" if what else ""
    raise ValueError(
        f"{_where(fn)}argument '{name}' must have rank {expect}{extra}, "
        f"got shape {tuple(np.shape(x))}"
    )


def check_shape(x: Any, name: str, expected: Sequence[int | None], *,
                fn: str | None = None) -> None:
  """Raises ValueError unless `x.shape` matches `expected` (None = any size)."""
  shape = tuple(np.shape(x))
  exp = tuple(expected)
  if len(shape) != len(exp) or any(
      e is not None and e != s for e, s in zip(exp, shape)):
    shown = "(" + ", ".join("*" if e is None else str(e) for e in exp) + (
        ",)" if len(exp) == 1 else ")")
    raise ValueError(
        f"{_where(fn)}argument '{name}' must have shape {shown}, got {shape}"
    )


def check_images(x: Any, name: str = "images", *, fn: str | None = None,
                 channels: int | None = None) -> None:
  """Raises ValueError unless `x` is an NHWC image batch (rank 4)."""
  check_rank(x, name, 4, fn=fn, what="NHWC images: batch, height, width, channels")
  if channels is not None and np.shape(x)[-1] != channels:
    raise ValueError(
        f"{_where(fn)}argument '{name}' must have {channels} channel(s) in the "
        f"last axis (NHWC), got shape {tuple(np.shape(x))}"
    )


def check_finite(tree: Any, name: str, *, fn: str | None = None) -> None:
  """Raises FloatingPointError if any leaf of `tree` holds NaN or Inf.

  The message names the argument and the first offending leaf path.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not _is_concrete(leaf):
      return
    arr = np.asarray(leaf)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
      n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
      where = jax.tree_util.keystr(path) or "<root>"
      raise FloatingPointError(
          f"{_where(fn)}argument '{name}' has {n_bad} non-finite value(s) "
          f"(NaN or Inf) at {where}"
      )


def check_same_structure(tree: Any, reference: Any, name: str, ref_name: str,
                         *, fn: str | None = None,
                         leading_axes: int = 0) -> None:
  """Raises ValueError unless `tree` matches `reference` in structure and shape.

  Args:
    tree: the pytree to check.
    reference: the pytree it must match (e.g. model params).
    name: the argument name of `tree`, used in the message.
    ref_name: what `reference` is, used in the message.
    fn: the public function name, used in the message.
    leading_axes: number of extra leading axes each leaf of `tree` may carry
      (1 for per-example gradients with a batch axis first).
  """
  t_def = jax.tree.structure(tree)
  r_def = jax.tree.structure(reference)
  if t_def != r_def:
    raise ValueError(
        f"{_where(fn)}argument '{name}' has a different pytree structure from "
        f"{ref_name}: got {t_def.num_leaves} leaves, expected {r_def.num_leaves}.\n"
        f"  {name}: {t_def}\n  {ref_name}: {r_def}"
    )
  paths = jax.tree_util.tree_flatten_with_path(reference)[0]
  for (path, ref_leaf), leaf in zip(paths, jax.tree.leaves(tree)):
    got = tuple(np.shape(leaf))
    want = tuple(np.shape(ref_leaf))
    if got[leading_axes:] != want or len(got) != len(want) + leading_axes:
      where = jax.tree_util.keystr(path)
      lead = " (after the leading batch axis)" if leading_axes else ""
      raise ValueError(
          f"{_where(fn)}argument '{name}' leaf {where} has shape {got}, "
          f"expected {want}{lead} to match {ref_name}"
      )


def check_finite_number(value: Any, name: str, *, fn: str | None = None
                        ) -> None:
  """Raises ValueError unless `value` is a finite real number (any sign).

  For hyper-parameters with no natural bound (e.g. a guidance weight), where
  NaN or Inf would otherwise flow silently into every output.
  """
  v = _as_float(value, name, fn)
  if v is None:
    return
  if not math.isfinite(v):
    raise ValueError(
        f"{_where(fn)}argument '{name}' must be finite, got {value!r}")


class NotAnIntegerError(TypeError, ValueError):
  """`check_int` got a non-integer: a TypeError, and a ValueError too, so that
  callers catching either (the CLI's exit-2 path catches both) see it."""


def _int_phrase(low: int | None, high: int | None) -> str:
  if low is not None and high is not None:
    return f"an int in [{low}, {high}]"
  if low is not None:
    return "a positive int" if low == 1 else f"an int >= {low}"
  return f"an int <= {high}" if high is not None else "an int"


def check_int(value: Any, name: str, *, fn: str | None = None,
              low: int | None = 1, high: int | None = None) -> int:
  """Returns `value` as a Python int, or raises naming the argument.

  The one integer check of jaxleak (counts, sizes, seeds, steps,
  resolutions). Python and NumPy integers are accepted; booleans (``True``
  is an int in Python, never a count here) and floats are not.

  Args:
    value: the value to check.
    name: the argument name, used in the message.
    fn: the public function name, used in the message.
    low: inclusive lower bound (default 1: a positive count), or None.
    high: inclusive upper bound, or None.

  Raises:
    NotAnIntegerError: (a TypeError and a ValueError) for a non-integer.
    ValueError: for an integer outside [low, high].
  """
  message = (f"{_where(fn)}argument '{name}' must be "
             f"{_int_phrase(low, high)}, got {value!r}")
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise NotAnIntegerError(message)
  v = int(value)
  if (low is not None and v < low) or (high is not None and v > high):
    raise ValueError(message)
  return v


def canonical_key(key: Any, fn: str | None = None, *,
                  why: str = "") -> jax.Array:
  """A typed PRNG key from a ``jax.random.key``, a legacy uint32[2] key or an int seed.

  Args:
    key: the key argument as the caller received it.
    fn: the public function name, used in messages.
    why: appended to the message when `key` is None (why there is no default).

  Raises:
    ValueError: if `key` is None.
    TypeError: for anything else that is not a key or an int.
  """
  if key is None:
    raise ValueError(f"{_where(fn)}argument 'key' is required (a "
                     f"jax.random.key or an int seed){why}")
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.key(int(key))
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(
      key.dtype, jax.dtypes.prng_key):
    return key
  if (isinstance(key, jax.Array) and key.dtype == np.uint32
      and key.shape == (2,)):
    return jax.random.wrap_key_data(key)  # A legacy PRNGKey.
  raise TypeError(f"{_where(fn)}argument 'key' must be a jax.random.key or an "
                  f"int, got {type(key).__name__}")


def check_keywords(target: Any, keywords: Iterable[str], what: str, *,
                   fn: str | None = None) -> list[str]:
  """Checks that `keywords` are keyword-only parameters of `target`.

  Registries hand hyper-parameters to a registered builder or method by
  keyword; an unknown one should fail at the call that names it, listing
  what the entry accepts.

  Args:
    target: the callable whose keyword-only parameters are accepted.
    keywords: the given keyword names.
    what: the entry, for the message (e.g. ``"model 'mlp'"``).
    fn: the public function, for the message.

  Returns:
    The accepted keyword-only parameter names, in signature order.

  Raises:
    TypeError: naming the unexpected keywords and listing the accepted ones.
  """
  accepted = [p.name for p in inspect.signature(target).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY]
  unknown = sorted(set(keywords) - set(accepted))
  if unknown:
    raise TypeError(
        f"{_where(fn)}{what} got unexpected keyword argument(s) "
        f"{', '.join(repr(u) for u in unknown)}; accepted: "
        f"{', '.join(accepted) or 'none'}")
  return accepted
