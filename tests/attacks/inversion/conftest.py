"""Shared fixtures for the gradient-inversion tests.

Second-order attack programs dominate test time through XLA:CPU compilation,
so every test here compiles with `inversion.FAST_COMPILE` (4-8x faster to
compile, slightly slower to run), uses 8x8 images and tiny models created
once per session, and reuses the same shapes so compiled steps are shared.
"""

import functools

import jax
import numpy as np
import pytest

from jaxleak import data
from jaxleak import models
from jaxleak.attacks import inversion


@pytest.fixture(scope="session", autouse=True)
def fast_compile():
  with inversion.compiler_options(inversion.FAST_COMPILE):
    yield


@functools.cache
def _create(name, num_classes, shape, kwargs_items, seed):
  return models.create(name, num_classes, shape, jax.random.key(seed),
                       **dict(kwargs_items))


@pytest.fixture(scope="session")
def get_model():
  """get_model(name, shape=(8, 8, 1), num_classes=10, seed=0, **kw)."""

  def get(name, shape=(8, 8, 1), num_classes=10, seed=0, **kwargs):
    return _create(name, num_classes, tuple(shape),
                   tuple(sorted(kwargs.items())), seed)

  return get


@pytest.fixture(scope="session")
def mlp_victim_16px(get_model):
  """mlp_victim_16px(hidden) -> (observation, private image [1, 16, 16, 1]):
  an MLP victim and one uniform-random private image of class 2."""

  def make(hidden):
    apply_fn, params = get_model("mlp", shape=(16, 16, 1), hidden=hidden)
    x = jax.random.uniform(jax.random.key(3), (1, 16, 16, 1))
    obs = inversion.observe(apply_fn, params, x, np.array([2]), key=0)
    return obs, np.asarray(x)

  return make


@pytest.fixture(scope="session")
def digits():
  """(images [N, 8, 8, 1], labels [N]) of sklearn's digits, train split."""
  ds = data.load("digits", "train")
  return np.asarray(ds.images), np.asarray(ds.labels)


@pytest.fixture(scope="session")
def vgrad():
  """Jitted `victim_gradient(apply_fn, params, x, y)` (eager is slow)."""
  return jax.jit(inversion.victim_gradient, static_argnums=0,
                 compiler_options=dict(inversion.FAST_COMPILE))


@pytest.fixture(scope="session")
def prior():
  """A tiny random-weight diffusion prior (16x16x1, one UNet level)."""
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  return diffusion.random_prior(
      diffusion.UNetSpec(resolution=16, channels=1, block_out_channels=(32,)),
      name="tiny")
