"""Compilation settings shared by the inversion module's jitted functions.

`compiler_options` switches every function wrapped with `jit` below to other
XLA options for the duration of a ``with`` block. `FAST_COMPILE` trades some
step speed for much faster compilation of the second-order programs that
gradient inversion compiles (tests, smoke runs, short attacks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import contextlib
import types
from typing import Any

import jax

__all__ = ("FAST_COMPILE", "compiler_options", "jit")

FAST_COMPILE: Mapping[str, Any] = types.MappingProxyType({
    "xla_backend_optimization_level": 0,
    "xla_cpu_use_fusion_emitters": False,
    "xla_llvm_disable_expensive_passes": True,
})
"""XLA:CPU options that compile second-order programs 4-8x faster (measured on
2 cores: 12 s -> 1.5 s for DLG's L-BFGS step on an 8x8 LeNet) for steps about
1.7x slower: worth it for short runs such as tests and smoke runs."""

_options: tuple[tuple[str, Any], ...] = ()


@contextlib.contextmanager
def compiler_options(options: Mapping[str, Any] | None):
  """Compiles inversion programs entered in this context with XLA `options`.

  Example: ``with inversion.compiler_options(inversion.FAST_COMPILE): ...``.
  Each distinct set of options keeps its own compilation cache; None (or {})
  restores XLA's defaults inside the block.
  """
  global _options
  previous = _options
  _options = tuple(sorted(dict(options or {}).items()))
  try:
    yield
  finally:
    _options = previous


class _OptionJit:
  """``jax.jit(fun, **kw)`` compiled with the options current at call time."""

  def __init__(self, fun: Callable[..., Any], kwargs: dict[str, Any]):
    self._fun = fun
    self._kwargs = kwargs
    self._jitted: dict[tuple[tuple[str, Any], ...], Any] = {}

  def _get(self):
    fn = self._jitted.get(_options)
    if fn is None:
      extra = {"compiler_options": dict(_options)} if _options else {}
      fn = jax.jit(self._fun, **self._kwargs, **extra)
      self._jitted[_options] = fn
    return fn

  def __call__(self, *args, **kwargs):
    return self._get()(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self._get().lower(*args, **kwargs)


def jit(fun: Callable[..., Any] | None = None, **kwargs: Any):
  """Like ``jax.jit`` (also as ``@jit(static_argnums=...)``), honouring
  `compiler_options`."""
  if fun is None:
    return lambda f: _OptionJit(f, kwargs)
  return _OptionJit(fun, kwargs)
