"""Transformations the attacks and DP code rely on: grad-of-grad, vmap, jvp/vjp."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import models

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)


def _images(seed, shape):
  # NumPy, not jax.random: XLA:CPU takes seconds to compile a threefry draw of
  # a rank-4 shape, which would dominate these tests.
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _sq_dist(a, b):
  return sum(jnp.sum((u - v) ** 2)
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _loss(apply_fn, params, x, y):
  return models.cross_entropy_loss(apply_fn(params, x), y)


def gradient_matching(apply_fn, params, x, y, g_target):
  """||grad_params L(x, y) - g_target||^2: the DLG objective."""
  g = jax.grad(_loss, argnums=1)(apply_fn, params, x, y)
  return _sq_dist(g, g_target)


def _some_target(params):
  # Any fixed target exercises the same second-order path; one derived from
  # the params avoids compiling a separate gradient program for it.
  return jax.tree.map(lambda p: 1e-2 * jnp.cos(p), params)


# Every model (and BatchNorm, via convnet) must be twice differentiable: the
# gradient of a gradient-matching loss w.r.t. the input must exist, be finite
# and non-zero. ReLU models included: their second derivative vanishes almost
# everywhere, but the input gradient of the matching loss does not, because the
# parameter gradient depends on the activations themselves.
@pytest.mark.parametrize("name,input_shape,kwargs", [
    ("lenet", CIFAR, {}),
    ("convnet", CIFAR, {"width": 4}),
    ("convnet", CIFAR, {"width": 4, "norm": "batch"}),
    ("mlp", MNIST, {}),
    ("cnn_mnist", MNIST, {}),
    ("cnn_cifar", CIFAR, {}),
    ("resnet18", CIFAR, {"width": 4}),
])
def test_grad_of_gradient_matching_wrt_input(get_model, jit, name, input_shape,
                                             kwargs):
  apply_fn, params = get_model(name, input_shape, **kwargs)
  if not apply_fn.fixed_resolution:
    input_shape = (16, 16, 3)  # Same params, smaller input: cheaper to run.
  # One example, DLG's setting; the unoptimised test build runs slowly, so the
  # batch is kept minimal.
  x = _images(11, (1,) + input_shape)
  y = jnp.array([1])

  def run(params, x, y):
    return jax.value_and_grad(gradient_matching, argnums=2)(
        apply_fn, params, x, y, _some_target(params))

  value, dx = jit(run)(params, x, y)
  assert dx.shape == x.shape
  assert np.isfinite(value) and value > 0
  assert np.all(np.isfinite(dx))
  assert np.linalg.norm(np.asarray(dx)) > 0


def test_second_order_matches_finite_differences_float64(get_model, jit):
  # A tiny float32 model, cast to float64 inside an x64 block. x64 is a context
  # manager here, so it cannot leak into other tests.
  apply_fn, params32 = get_model("lenet", (8, 8, 1), num_classes=3)
  with jax.enable_x64(True):
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), params32)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(2, 8, 8, 1)))
    v = jnp.asarray(rng.normal(size=x.shape))
    y = jnp.array([0, 2])
    eps = 1e-5

    def run(params, x, v):
      g_target = _some_target(params)
      f = lambda x: gradient_matching(apply_fn, params, x, y, g_target)
      dx = jax.grad(f)(x)
      fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
      return dx, fd

    dx, fd = jit(run)(params, x, v)
    assert dx.dtype == jnp.float64
    np.testing.assert_allclose(np.vdot(dx, v), fd, rtol=1e-6)
  assert jnp.zeros(1).dtype == jnp.float32


@pytest.mark.parametrize("name,input_shape,kwargs", [
    ("mlp", MNIST, {}),
    ("lenet", CIFAR, {}),
])
def test_per_example_grads_via_vmap_average_to_batch_grad(get_model, jit, name,
                                                          input_shape, kwargs):
  apply_fn, params = get_model(name, input_shape, **kwargs)
  x = _images(12, (3,) + input_shape)
  y = jnp.array([0, 3, 3])

  def loss(p, x, y):
    return models.cross_entropy_loss(apply_fn(p, x), y)

  def both(params, x, y):
    per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(
        params, x[:, None], y[:, None])
    return per_example, jax.grad(loss)(params, x, y)

  per_example, batch = jit(both)(params, x, y)
  for pe, b in zip(jax.tree.leaves(per_example), jax.tree.leaves(batch)):
    assert pe.shape == (3,) + b.shape
    # The loss is a batch mean, so the batch gradient is the mean of the
    # per-example gradients (their sum divided by B).
    np.testing.assert_allclose(pe.sum(0) / 3, b, rtol=2e-4, atol=1e-6)


def test_jvp_and_vjp_through_apply_fn(get_model, jit):
  apply_fn, params = get_model("lenet", CIFAR)
  x = _images(13, (2,) + CIFAR)

  def run(params, x):
    tangent = jax.tree.map(jnp.ones_like, params)
    f = lambda p: apply_fn(p, x)
    out, jvp_out = jax.jvp(f, (params,), (tangent,))
    _, vjp_fn = jax.vjp(f, params)
    (cotangent,) = vjp_fn(jnp.ones_like(out))
    # Adjoint identity: <J t, 1> == <t, J^T 1>.
    lhs = jnp.sum(jvp_out)
    rhs = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(cotangent),
                                             jax.tree.leaves(tangent)))
    return lhs, rhs, _sq_dist(cotangent, jax.tree.map(jnp.zeros_like,
                                                      cotangent))

  lhs, rhs, cot_norm = jit(run)(params, x)
  assert cot_norm > 0
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def test_losses():
  logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], np.float32)
  labels = np.array([0, 2])
  soft = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], np.float32)

  @jax.jit
  def run(logits, labels, soft):
    return (models.cross_entropy_loss(logits, labels),
            models.soft_cross_entropy(logits, jax.nn.one_hot(labels, 3)),
            models.soft_cross_entropy(logits, soft))

  hard, one_hot, soft_loss = run(logits, labels, soft)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -(log_p[0, 0] + log_p[1, 2]) / 2
  np.testing.assert_allclose(hard, expected, rtol=1e-6)
  np.testing.assert_allclose(one_hot, expected, rtol=1e-6)
  np.testing.assert_allclose(
      soft_loss, -(0.5 * log_p[0, 0] + 0.5 * log_p[0, 1] + log_p[1, 2]) / 2,
      rtol=1e-6)


def test_loss_errors_name_the_argument():
  with pytest.raises(ValueError, match="'labels'"):
    models.cross_entropy_loss(jnp.zeros((2, 3)), jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="'logits'"):
    models.cross_entropy_loss(jnp.zeros((3,)), jnp.zeros((3,), jnp.int32))
  with pytest.raises(ValueError, match="'soft_targets'"):
    models.soft_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2, 4)))


def test_slice_max_pool_equals_flax_max_pool_values_and_gradients():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  from jaxleak.models.architectures import max_pool  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(3), (2, 13, 11, 4))  # no exact ties
  for window, strides in [((2, 2), (1, 1)), ((2, 2), (2, 2)), ((3, 3), (2, 2))]:
    ref = lambda v: nn.max_pool(v, window, strides=strides, padding="VALID")
    got = lambda v: max_pool(v, window, strides)
    np.testing.assert_array_equal(got(x), ref(x))
    cot = jax.random.normal(jax.random.key(4), ref(x).shape)
    np.testing.assert_allclose(jax.vjp(got, x)[1](cot)[0],
                               jax.vjp(ref, x)[1](cot)[0], rtol=1e-6)
