"""Objective pieces: the gradient operator, distances and priors."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak._src import matmul_conv
from jaxleak.attacks import inversion
from jaxleak.models import cross_entropy_loss


def _tree(a, b):
  return {"w": jnp.asarray(a, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


def test_victim_gradient_is_the_batch_mean_of_per_example_gradients(
    get_model, digits, vgrad):
  apply_fn, params = get_model("lenet")
  x, y = jnp.asarray(digits[0][:3]), jnp.asarray(digits[1][:3])
  batch = vgrad(apply_fn, params, x, y)
  assert jax.tree.structure(batch) == jax.tree.structure(params["params"])
  singles = [vgrad(apply_fn, params, x[i:i + 1], y[i:i + 1])
             for i in range(3)]
  mean = jax.tree.map(lambda *g: sum(g) / 3, *singles)
  for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(mean)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # Soft one-hot labels give the same gradient as integer labels.
  soft = vgrad(apply_fn, params, x, jax.nn.one_hot(y, 10))
  for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(soft)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # And it is the gradient of the mean cross-entropy.
  ref = jax.jit(jax.grad(lambda p: cross_entropy_loss(
      apply_fn({"params": p}, x), y)))(params["params"])
  for a, b in zip(jax.tree.leaves(batch), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_local_update_gradient(get_model, digits, vgrad):
  apply_fn, params = get_model("lenet")
  x, y = jnp.asarray(digits[0][:2]), jnp.asarray(digits[1][:2])
  local = jax.jit(inversion.local_update_gradient,
                  static_argnames=("apply_fn", "local_steps",
                                   "local_batch_size"))
  # Two steps of one image each, by hand: (θ0 - θ2) / (2 η).
  lr = 0.1
  g0 = vgrad(apply_fn, params, x[:1], y[:1])
  p1 = inversion.with_trainable(params, jax.tree.map(
      lambda t, g: t - lr * g, params["params"], g0))
  g1 = vgrad(apply_fn, p1, x[1:], y[1:])
  two = local(apply_fn, params, x, y, local_steps=2, local_lr=lr,
              local_batch_size=1)
  for a, b0, b1 in zip(jax.tree.leaves(two), jax.tree.leaves(g0),
                       jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, (b0 + b1) / 2, rtol=1e-4, atol=1e-6)


def test_distances():
  a = _tree([[1.0, 2.0]], [3.0])
  b = _tree([[0.0, 2.0]], [1.0])
  assert float(inversion.l2_distance(a, b)) == pytest.approx(5.0)
  assert float(inversion.l2_distance(a, b, squared=False)) == pytest.approx(
      5.0**0.5)
  assert float(inversion.cosine_distance(a, a)) == pytest.approx(0.0, abs=1e-6)
  neg = jax.tree.map(lambda t: -t, a)
  assert float(inversion.cosine_distance(a, neg)) == pytest.approx(2.0)
  # Scale invariance, and the value against a flat computation.
  big = jax.tree.map(lambda t: 7.0 * t, b)
  fa, fb = np.array([1, 2, 3.0]), np.array([0, 2, 1.0])
  want = 1 - fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb)
  assert float(inversion.cosine_distance(a, big)) == pytest.approx(want,
                                                                   rel=1e-5)
  # Zero-distance points have finite (zero) gradients.
  g = jax.grad(lambda t: inversion.l2_distance(t, a, squared=False))(a)
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g))
  assert set(inversion.DISTANCES) == {"l2", "cosine"}


def test_total_variation_and_priors():
  flat = jnp.full((2, 5, 5, 3), 0.3)
  assert float(inversion.total_variation(flat)) == pytest.approx(2e-8,
                                                                 abs=1e-9)
  x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)
  # Differences over the 2x2 positions where both exist:
  # dh = [[0, 1], [0, -1]] -> |.| sum 2; dw = [[0, 0], [1, -1]] -> sum 2.
  assert float(inversion.total_variation(x, eps=0.0)) == pytest.approx(1.0)
  assert float(inversion.total_variation(x, eps=0.0, p=2, q=0.5)) == (
      pytest.approx(np.mean([0.0, 1.0, 1.0, 2**0.5])))
  assert float(inversion.l2_prior(jnp.ones((2, 2, 2, 1)))) == pytest.approx(4)
  stats = [(jnp.ones(3), jnp.ones(3)), (jnp.zeros(2), jnp.ones(2))]
  assert float(inversion.bn_matching(stats, stats)) == 0.0
  shifted = [(jnp.ones(3) + 1, jnp.ones(3)), (jnp.zeros(2), jnp.ones(2) * 2)]
  # First layer weighted 10: 10 * ||1||_2 (3 entries) + 1 * ||1||_2 (2).
  assert float(inversion.bn_matching(shifted, stats)) == pytest.approx(
      10 * 3**0.5 + 2**0.5, rel=1e-5)
  g = jax.grad(lambda s: inversion.bn_matching(s, stats))(stats)
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g))


def test_matmul_conv_matches_xla_convolutions_to_second_order(get_model):
  apply_fn, params = get_model("convnet", shape=(9, 9, 2), width=2)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(3, 9, 9, 2)), jnp.float32)
  y = jnp.asarray([1, 2, 3])
  target = jax.tree.map(lambda t: jnp.asarray(rng.normal(size=t.shape),
                                              jnp.float32), params["params"])

  def objective(z, matmul):
    with (matmul_conv.intercept() if matmul else
          contextlib.nullcontext()):
      g = inversion.victim_gradient(apply_fn, params, z, y)
      logits = apply_fn(params, z)
    return inversion.cosine_distance(g, target) + jnp.sum(logits**2), g

  fn = jax.jit(jax.value_and_grad(objective, has_aux=True),
               static_argnums=1,
               compiler_options=dict(inversion.FAST_COMPILE))
  (v0, g0), dx0 = fn(x, False)
  (v1, g1), dx1 = fn(x, True)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(dx1, dx0, rtol=1e-4, atol=1e-6)
  # Second order through a ReLU network: finite and not identically zero.
  assert np.all(np.isfinite(dx0)) and float(jnp.abs(dx0).max()) > 0
  # Odd sizes, stride 2 and 'SAME' padding, with explicit padding too.
  w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
  for strides, pads in (((2, 2), ((0, 1), (0, 1))), ((1, 2), ((2, 2), (1, 0)))):
    ref = jax.lax.conv_general_dilated(x, w, strides, pads,
                                       dimension_numbers=("NHWC", "HWIO",
                                                          "NHWC"))
    np.testing.assert_allclose(matmul_conv.conv2d(x, w, strides, pads), ref,
                               rtol=1e-5, atol=1e-6)
    p = matmul_conv.patches(x, (3, 3), strides, pads)
    np.testing.assert_allclose(p @ w.reshape(-1, 4), ref, rtol=1e-5,
                               atol=1e-5)
