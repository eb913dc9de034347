"""Reconstruction vulnerability (RV): Hutchinson estimate vs exact norm."""

import jax
import numpy as np
import pytest

from jaxleak.attacks import inversion
from jaxleak.attacks.inversion import theory


@pytest.fixture(scope="module")
def tiny_mlp(get_model):
  apply_fn, params = get_model("mlp", shape=(4, 4, 1), num_classes=3,
                               hidden=(6,))
  x = jax.random.uniform(jax.random.key(0), (3, 4, 4, 1))
  return apply_fn, params, x, np.array([0, 2, 1])


@pytest.mark.parametrize("space", ["params", "input"])
def test_hutchinson_matches_exact_frobenius_norm(tiny_mlp, space):
  apply_fn, params, x, y = tiny_mlp
  exact = [theory.mixed_jacobian_frobenius_exact(apply_fn, params,
                                                 x[i:i + 1], y[i:i + 1])
           for i in range(3)]
  res = theory.reconstruction_vulnerability(apply_fn, params, x, y, key=0,
                                            num_probes=2000, space=space)
  np.testing.assert_allclose(res.per_input, exact, rtol=0.05)
  assert res.rv == pytest.approx(max(res.per_input))
  assert res.argmax == int(np.argmax(res.per_input))
  assert res.num_params == 16 * 6 + 6 + 6 * 3 + 3 and res.input_size == 16


@pytest.mark.parametrize("space", ["params", "input"])
def test_logits_target_matches_exact_norm_summed_over_classes(tiny_mlp,
                                                              space):
  apply_fn, params, x, y = tiny_mlp
  exact = [theory.mixed_jacobian_frobenius_exact(
      apply_fn, params, x[i:i + 1], y[i:i + 1], target="logits")
           for i in range(3)]
  # The loss Jacobian is a different matrix: the check must tell them apart.
  exact_loss = [theory.mixed_jacobian_frobenius_exact(
      apply_fn, params, x[i:i + 1], y[i:i + 1]) for i in range(3)]
  assert min(abs(a / b - 1) for a, b in zip(exact, exact_loss)) > 0.2
  res = theory.reconstruction_vulnerability(
      apply_fn, params, x, y, key=0, num_probes=3000, space=space,
      target="logits")
  np.testing.assert_allclose(res.per_input, exact, rtol=0.03)
  assert res.target == "logits"


def test_relative_rv_divides_by_the_shared_gradient_rms(tiny_mlp):
  apply_fn, params, x, y = tiny_mlp
  res = theory.reconstruction_vulnerability(apply_fn, params, x, y, key=0,
                                            num_probes=8)
  for i in range(3):
    grad = jax.grad(lambda p: inversion.victim_loss(  # pylint: disable=cell-var-from-loop
        apply_fn, p, x[i:i + 1], y[i:i + 1]))(params)
    assert res.grad_rms[i] == pytest.approx(float(inversion.tree_rms(grad)),
                                            rel=1e-5)
  np.testing.assert_allclose(res.relative, res.per_input / res.grad_rms,
                             rtol=1e-6)
  assert res.rv_relative == pytest.approx(res.relative.max())


def test_rv_grows_with_a_scaled_output_layer(tiny_mlp):
  # Doubling the head's weights doubles every mixed derivative that flows
  # through it: the RV measure must move the same way as the exact norm.
  apply_fn, params, x, y = tiny_mlp
  big = jax.tree.map(lambda a: a, params)
  big["params"]["head"] = jax.tree.map(lambda a: 2.0 * a,
                                       params["params"]["head"])
  e1 = theory.mixed_jacobian_frobenius_exact(apply_fn, params, x[:1], y[:1])
  e2 = theory.mixed_jacobian_frobenius_exact(apply_fn, big, x[:1], y[:1])
  r1 = theory.reconstruction_vulnerability(apply_fn, params, x[:1], y[:1],
                                           key=1, num_probes=500).rv
  r2 = theory.reconstruction_vulnerability(apply_fn, big, x[:1], y[:1],
                                           key=1, num_probes=500).rv
  assert (e2 > e1) == (r2 > r1)


def test_linearized_bound_is_linear_in_noise_and_inverse_in_rv():
  s = np.array([0.0, 1e-3, 1e-2])
  b = theory.linearized_error_bound(s, rv=2.0, input_size=16, num_params=100)
  np.testing.assert_allclose(b, s * 16 / (4 * 2.0))
  b2 = theory.linearized_error_bound(s, rv=4.0, input_size=16, num_params=8)
  np.testing.assert_allclose(b2, s * 8 / (4 * 4.0))


def test_exported_and_validated(tiny_mlp):
  apply_fn, params, x, y = tiny_mlp
  assert inversion.reconstruction_vulnerability is (
      theory.reconstruction_vulnerability)
  with pytest.raises(ValueError, match="'num_probes'"):
    theory.reconstruction_vulnerability(apply_fn, params, x, y, key=0,
                                        num_probes=0)
  with pytest.raises(ValueError, match="'labels'"):
    theory.reconstruction_vulnerability(apply_fn, params, x, y[:2], key=0)
  with pytest.raises(ValueError, match="'target'"):
    theory.reconstruction_vulnerability(apply_fn, params, x, y, key=0,
                                        target="probabilities")


def _explicit_gram(apply_fn, params, image, label):
  jac = jax.jacfwd(lambda x: jax.grad(lambda p: inversion.victim_loss(
      apply_fn, p, x, label))(params))(image)
  rows = np.concatenate([np.asarray(leaf).reshape(-1, image.size)
                         for leaf in jax.tree.leaves(jac)])  # [d_θ, d_x]
  return rows.T.astype(np.float64) @ rows.astype(np.float64)


def test_input_gram_eigenvalues_match_an_explicit_jacobian(tiny_mlp):
  apply_fn, params, x, y = tiny_mlp
  gram = _explicit_gram(apply_fn, params, x[:1], y[:1])
  # chunk_size 5 does not divide d_x = 16: the padded last chunk is used.
  lam = theory.input_gram_eigenvalues(apply_fn, params, x[:1], y[:1],
                                      chunk_size=5)
  np.testing.assert_allclose(lam, np.linalg.eigvalsh(gram), rtol=1e-4,
                             atol=1e-6 * lam.max())
  assert lam.shape == (16,) and np.all(np.diff(lam) >= 0)


def test_posterior_rmse_is_the_linear_gaussian_mmse(tiny_mlp):
  apply_fn, params, x, y = tiny_mlp
  gram = _explicit_gram(apply_fn, params, x[:1], y[:1])
  lam = np.linalg.eigvalsh(gram)
  v, s = 0.1, np.array([1e-3, 1e-2, 1e-1])
  got = theory.linearized_posterior_rmse(lam, s, v)
  for si, g in zip(s, got):
    cov = np.linalg.inv(gram / si**2 + np.eye(16) / v)
    assert g == pytest.approx(np.sqrt(np.trace(cov) / 16), rel=1e-6)
  assert np.all(np.diff(got) > 0)  # more noise, larger floor
  limits = theory.linearized_posterior_rmse(np.maximum(lam, 1e-9),
                                            [0.0, 1e6], v)
  np.testing.assert_allclose(limits, [0.0, np.sqrt(v)], atol=1e-9)


def test_posterior_rmse_and_gram_reject_bad_input(tiny_mlp):
  apply_fn, params, x, y = tiny_mlp
  with pytest.raises(ValueError, match="'prior_variance'"):
    theory.linearized_posterior_rmse([1.0], 0.1, 0.0)
  with pytest.raises(ValueError, match="'eigenvalues'"):
    theory.linearized_posterior_rmse([1.0, -2.0], 0.1, 0.1)
  with pytest.raises(ValueError, match="'noise_std'"):
    theory.linearized_posterior_rmse([1.0], -0.1, 0.1)
  with pytest.raises(ValueError, match="'image'"):
    theory.input_gram_eigenvalues(apply_fn, params, x, y)  # batch of 3
  with pytest.raises(ValueError, match="'max_input_size'"):
    theory.input_gram_eigenvalues(apply_fn, params, x[:1], y[:1],
                                  max_input_size=8)
