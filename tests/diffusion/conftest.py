"""Shared fixtures for jaxleak.diffusion tests.

UNet initialisation and compilation dominate these tests (seconds each on
CPU), so one tiny class-conditional UNet is built once per session and test
programs are compiled for compile speed (LLVM -O0, classic CPU emitters);
the computation is the same up to floating-point reassociation.
"""

import functools
from typing import Any, NamedTuple

import jax
import pytest

from jaxleak import diffusion

FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_cpu_use_fusion_emitters": False,
    "xla_llvm_disable_expensive_passes": True,
}

# GroupNorm in diffusers needs multiples of 32 channels; 16x16, two levels,
# class-conditional with cross-attention at 8x8 and in the mid block.
TINY_SPEC = diffusion.UNetSpec(resolution=16, channels=1,
                               block_out_channels=(32, 32), num_classes=3,
                               cross_attention_dim=32, attention_heads=2)


def _fast_jit(fun, **kwargs):
  """jax.jit with quick (unoptimised) CPU compilation, for test programs."""
  return jax.jit(fun, compiler_options=FAST_COMPILE, **kwargs)


@pytest.fixture(scope="session")
def fast_jit():
  """`jax.jit` with quick CPU compilation (a fixture: tests/ is no package)."""
  return _fast_jit


class Tiny(NamedTuple):
  spec: diffusion.UNetSpec
  params: Any
  apply_fn: Any
  schedule: diffusion.NoiseSchedule


@functools.cache
def _tiny() -> Tiny:
  params = diffusion.init_unet(TINY_SPEC, jax.random.key(0))
  return Tiny(TINY_SPEC, params, diffusion.make_unet_apply(TINY_SPEC),
              diffusion.linear_schedule(1000))


@pytest.fixture(scope="session")
def tiny() -> Tiny:
  """The tiny conditional UNet, its params, apply function and schedule."""
  return _tiny()
