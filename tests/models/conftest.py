"""Shared fixtures for jaxleak.models tests.

XLA's CPU compiler is the bottleneck of these tests (seconds per second-order
program), so models are created once per session and test programs are
compiled for compile speed: LLVM optimisation level 0 and XLA:CPU's classic
elemental emitters instead of the fusion emitters. The computation is the
same (up to floating-point reassociation); compilation is 2-5x faster.
"""

import functools

import jax
import pytest

from jaxleak import models

FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_cpu_use_fusion_emitters": False,
    "xla_llvm_disable_expensive_passes": True,
}


def fast_jit(fun, **kwargs):
  """jax.jit with quick (unoptimised) CPU compilation, for test programs."""
  return jax.jit(fun, compiler_options=FAST_COMPILE, **kwargs)


@functools.cache
def _create(name, num_classes, input_shape, kwargs_items):
  return models.create(name, num_classes, input_shape, jax.random.key(0),
                       **dict(kwargs_items))


@pytest.fixture(scope="session")
def get_model():
  """get_model(name, input_shape, num_classes=10, **kw) -> (apply_fn, params).

  Cached for the session: the same configuration is created once.
  """

  def get(name, input_shape, num_classes=10, **kwargs):
    return _create(name, num_classes, tuple(input_shape),
                   tuple(sorted(kwargs.items())))

  return get


@pytest.fixture(scope="session")
def jit():
  return fast_jit
