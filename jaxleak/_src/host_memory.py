"""Handing the compiler's freed heap back to the operating system.

XLA:CPU's compiler frees most of what it allocates, but glibc keeps freed
heap pages mapped, so after compiling a large step the process stays at the
compiler's high-water mark and the step's own buffers come on top of it.
glibc's ``malloc_trim(0)`` returns those pages. Measured on the cnn_mnist DP
step at B=1024 (2 CPU cores): resident memory after compiling fell from
about 700 to 450 MB.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import jax

__all__ = ("release_freed_heap", "CompileThenTrim")


@functools.cache
def _malloc_trim():
  try:
    return ctypes.CDLL("libc.so.6").malloc_trim
  except (OSError, AttributeError):
    return None  # Not glibc (macOS, musl): nothing to do.


def release_freed_heap() -> bool:
  """Returns freed C heap pages to the OS; True if any were released."""
  trim = _malloc_trim()
  return bool(trim(0)) if trim is not None else False


def _traced(tree: Any) -> bool:
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def _commit(x: Any) -> Any:
  """`x` committed to the devices it is already on (no copy)."""
  if isinstance(x, jax.Array) and not getattr(x, "_committed", True):
    return jax.device_put(x, x.sharding)
  return x


class CompileThenTrim:
  """A jitted step whose first concrete call compiles, trims, then runs.

  ``jit`` compiles committed and uncommitted arguments separately, and a
  step's outputs are committed. So the arguments at `carried_argnums` (state
  the step returns and is called with again, e.g. params and optimiser state)
  are committed, where they already are, on every concrete call; otherwise a
  fresh ``jax.random.key`` in the initial state costs a second compilation
  on the second call. The first concrete call then compiles ahead of time
  (filling the cache that the jitted call hits), calls `release_freed_heap`,
  and runs. Calls under a trace (inside a user's ``jit``, ``grad`` or
  ``scan``) are the plain jitted function. Attributes such as ``lower`` pass
  through.
  """

  def __init__(self, jitted, carried_argnums: tuple[int, ...] = ()):
    self._jitted = jitted
    self._carried = tuple(carried_argnums)
    self._trimmed = False
    functools.update_wrapper(self, jitted)

  def __call__(self, *args):
    if _traced(args):
      return self._jitted(*args)
    args = tuple(jax.tree.map(_commit, a) if i in self._carried else a
                 for i, a in enumerate(args))
    if not self._trimmed:
      self._jitted.lower(*args).compile()
      release_freed_heap()
      self._trimmed = True
    return self._jitted(*args)

  def __getattr__(self, name):
    return getattr(self._jitted, name)
