"""Initialisation schemes: statistics, purity, and what `create(init=...)` does."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import models

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)


def _kernels_and_biases(params):
  """{layer: (kernel, bias or None)} for every layer with a kernel."""
  out = {}
  flat = jax.tree_util.tree_flatten_with_path(params["params"])[0]
  for path, leaf in flat:
    if path[-1].key == "kernel":
      out[jax.tree_util.keystr(path[:-1])] = np.asarray(leaf)
  return out


def _biases(params):
  flat = jax.tree_util.tree_flatten_with_path(params["params"])[0]
  kernel_parents = {p[:-1] for p, _ in flat if p[-1].key == "kernel"}
  return [np.asarray(l) for p, l in flat
          if p[-1].key == "bias" and p[:-1] in kernel_parents]


@pytest.fixture(scope="module")
def mlp(get_model):
  # Large Dense kernels (784x512, 512x512) give tight sample statistics.
  return get_model("mlp", MNIST)


@pytest.fixture(scope="module")
def cnn(get_model):
  # Conv kernels of fan-in 27 ... 576 and a Dense head.
  return get_model("cnn_cifar", CIFAR)


def test_lenet_default_init_is_uniform_half(get_model):
  _, params = get_model("lenet", CIFAR)
  leaves = [np.asarray(l) for l in jax.tree.leaves(params["params"])]
  allv = np.concatenate([l.ravel() for l in leaves])
  assert allv.min() >= -0.5 and allv.max() <= 0.5
  # Weights *and* biases are drawn (not zero), spread over the interval.
  for leaf in leaves:
    assert np.ptp(leaf) > 0.25
  assert abs(allv.var() - 1 / 12) < 0.01


def test_other_models_default_to_lecun_normal(cnn):
  _, params = cnn
  for name, k in _kernels_and_biases(params).items():
    fan_in = math.prod(k.shape[:-1])
    if k.size > 5000:
      assert abs(k.std() * math.sqrt(fan_in) - 1) < 0.05, name
    assert np.abs(k).max() <= 2 / math.sqrt(fan_in) / 0.8796 + 1e-6, name
  assert all(np.all(b == 0) for b in _biases(params))


def test_uniform_scheme(mlp):
  _, params = mlp
  new = models.reinit(params, "uniform", jax.random.key(1))
  for k in _kernels_and_biases(new).values():
    assert k.min() >= -0.5 and k.max() <= 0.5
  big = _kernels_and_biases(new)["['dense0']"]
  assert abs(big.var() - 1 / 12) < 0.002
  assert abs(big.mean()) < 0.005
  b = np.concatenate(_biases(new))
  assert b.min() >= -0.5 and b.max() <= 0.5 and b.std() > 0.2


def test_normal_scheme(mlp):
  _, params = mlp
  new = models.reinit(params, "normal", jax.random.key(2))
  big = _kernels_and_biases(new)["['dense0']"]
  assert abs(big.std() - 0.5) < 0.005
  assert abs(big.mean()) < 0.005
  b = np.concatenate(_biases(new))
  assert abs(b.std() - 0.5) < 0.05


@pytest.mark.parametrize("params_fixture", ["mlp", "cnn"])
def test_kaiming_scheme(request, params_fixture):
  _, params = request.getfixturevalue(params_fixture)
  new = models.reinit(params, "kaiming", jax.random.key(3))
  for name, k in _kernels_and_biases(new).items():
    if k.size < 5000:
      continue
    fan_in = math.prod(k.shape[:-1])
    expected = math.sqrt(2 / fan_in)
    assert abs(k.std() / expected - 1) < 0.03, name
    # Untruncated normal: some values beyond 2 std.
    assert np.abs(k).max() > 2.5 * expected, name
  assert all(np.all(b == 0) for b in _biases(new))


@pytest.mark.parametrize("params_fixture", ["mlp", "cnn"])
def test_xavier_scheme(request, params_fixture):
  _, params = request.getfixturevalue(params_fixture)
  new = models.reinit(params, "xavier", jax.random.key(4))
  for name, k in _kernels_and_biases(new).items():
    receptive = math.prod(k.shape[:-2])
    fan_in, fan_out = receptive * k.shape[-2], receptive * k.shape[-1]
    limit = math.sqrt(6 / (fan_in + fan_out))
    assert np.abs(k).max() <= limit * (1 + 1e-6), name
    if k.size > 5000:
      assert abs(k.var() / (limit**2 / 3) - 1) < 0.03, name
      assert np.abs(k).max() > 0.99 * limit, name
  assert all(np.all(b == 0) for b in _biases(new))


def test_lecun_scheme_matches_flax_distribution(mlp):
  _, params = mlp
  new = models.reinit(params, "lecun", jax.random.key(5))
  big = _kernels_and_biases(new)["['dense0']"]
  assert abs(big.std() * math.sqrt(784) - 1) < 0.01
  assert np.abs(big).max() <= 2 / math.sqrt(784) / 0.8796 + 1e-6


def test_norm_layers_and_batch_stats_untouched(get_model):
  _, params = get_model("convnet", CIFAR, width=4, norm="batch")
  new = models.reinit(params, "uniform", jax.random.key(6))
  for i in range(8):
    np.testing.assert_array_equal(new["params"][f"norm{i}"]["scale"], 1.0)
    np.testing.assert_array_equal(new["params"][f"norm{i}"]["bias"], 0.0)
  jax.tree.map(np.testing.assert_array_equal, new["batch_stats"],
               params["batch_stats"])
  # Conv biases (next to a kernel) are re-drawn.
  assert np.ptp(np.asarray(new["params"]["conv0"]["bias"])) > 0


def test_reinit_is_pure_and_deterministic(get_model):
  _, params = get_model("lenet", CIFAR)
  before = jax.tree.map(np.array, params)
  a = models.reinit(params, "kaiming", jax.random.key(7))
  b = models.reinit(params, "kaiming", jax.random.key(7))
  c = models.reinit(params, "kaiming", jax.random.key(8))
  jax.tree.map(np.testing.assert_array_equal, before, params)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert jax.tree.structure(a) == jax.tree.structure(params)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(params)):
    assert x.shape == y.shape and x.dtype == y.dtype
  assert not np.allclose(a["params"]["head"]["kernel"],
                         c["params"]["head"]["kernel"])
  assert models.reinit(params, "default", jax.random.key(0)) is params


def test_reinit_on_bare_collection_and_under_jit(get_model):
  _, params = get_model("lenet", CIFAR)
  key = jax.random.key(9)
  bare = models.reinit(params["params"], "xavier", key)
  full = models.reinit(params, "xavier", key)
  jax.tree.map(np.testing.assert_array_equal, bare, full["params"])
  # Traced path (slicing in the graph) gives the same values as the host path.
  jitted = jax.jit(models.reinit, static_argnums=1)(params, "xavier", key)
  jax.tree.map(np.testing.assert_array_equal, jitted, full)


def test_create_init_argument(get_model):
  _, kaiming = get_model("cnn_mnist", MNIST, init="kaiming")
  k = np.asarray(kaiming["params"]["conv1"]["kernel"])
  assert abs(k.std() / math.sqrt(2 / (4 * 4 * 16)) - 1) < 0.05
  np.testing.assert_array_equal(kaiming["params"]["conv1"]["bias"], 0.0)
  # init="default" for lenet is the uniform scheme (same key, same values).
  _, lenet_default = get_model("lenet", CIFAR)
  _, lenet_uniform = get_model("lenet", CIFAR, init="uniform")
  jax.tree.map(np.testing.assert_array_equal, lenet_default, lenet_uniform)


def test_reinit_errors():
  with pytest.raises(ValueError, match="'scheme'"):
    models.reinit({"params": {}}, "he", jax.random.key(0))
  with pytest.raises(TypeError, match="'params'"):
    models.reinit([jnp.zeros(3)], "uniform", jax.random.key(0))


def test_schemes_listed():
  assert set(models.INIT_SCHEMES) >= {
      "default", "uniform", "normal", "kaiming", "xavier"}
