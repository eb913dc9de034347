"""The victim simulation, defences and input validation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak.attacks import inversion


@pytest.fixture(scope="module")
def victim(get_model, digits):
  apply_fn, params = get_model("lenet")
  return apply_fn, params, digits[0][:4], digits[1][:4]


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_observe_without_defence_shares_the_exact_gradient(victim, vgrad):
  apply_fn, params, x, y = victim
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  ref = vgrad(apply_fn, params, jnp.asarray(x), jnp.asarray(y))
  for a, b in zip(_leaves(obs.gradient), _leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
  assert obs.batch_size == 4 and obs.image_shape == (8, 8, 1)
  assert obs.num_classes == 10 and obs.batch_shape == (4, 8, 8, 1)
  np.testing.assert_array_equal(obs.labels, y)
  assert obs.bn_stats is None and obs.defence == {"name": "none"}
  hidden = inversion.observe(apply_fn, params, x, y, key=0,
                             reveal_labels=False)
  assert hidden.labels is None and not hidden.has_labels


def test_fedavg_observation_matches_the_attackers_objective(victim):
  apply_fn, params, x, y = victim
  obs = inversion.observe(apply_fn, params, x, y, key=0, local_steps=3,
                          local_lr=0.1, local_batch_size=2)
  assert obs.local_steps == 3 and obs.local_batch_size == 2
  # The attack's objective simulates the same local steps: zero at the
  # private batch, positive elsewhere.
  problem, hp = inversion.make_problem(obs, lr=0.1, distance="l2")
  consts = {"params": params, "target": obs.gradient, "labels": obs.labels,
            "hp": hp}
  objective = jax.jit(problem.objective,
                      compiler_options=dict(inversion.FAST_COMPILE))
  assert float(objective(jnp.asarray(x), consts)) < 1e-10
  assert float(objective(jnp.asarray(x[::-1]), consts)) > 1e-6


def test_gaussian_noise_std_absolute_and_relative(victim):
  apply_fn, params, x, y = victim
  clean = _leaves(inversion.observe(apply_fn, params, x, y, key=0).gradient)
  flat = np.concatenate([c.ravel() for c in clean])
  rms = np.sqrt(np.mean(flat**2))
  for defence, want in ((inversion.GaussianNoise(std=0.05), 0.05),
                        (inversion.GaussianNoise(std=2.0, relative=True),
                         2.0 * rms)):
    noisy = _leaves(inversion.observe(apply_fn, params, x, y, key=1,
                                      defence=defence).gradient)
    diff = np.concatenate([(n - c).ravel() for n, c in zip(noisy, clean)])
    assert abs(diff.std() / want - 1) < 0.05  # ~3.3k coordinates
    assert abs(diff.mean()) < 4 * want / np.sqrt(diff.size)
  # Names resolve through the registry with parameters.
  d = inversion.make_defence("gaussian", std=0.1, relative=True)
  assert d == inversion.GaussianNoise(0.1, True)
  assert d.describe() == {"name": "gaussian", "std": 0.1, "relative": True}


def test_dp_clip_reuses_the_dp_rules(victim):
  apply_fn, params, x, y = victim
  clean = _leaves(inversion.observe(apply_fn, params, x, y, key=0).gradient)
  loose = _leaves(inversion.observe(
      apply_fn, params, x, y, key=0,
      defence=inversion.DPClip(l2_norm_clip=1e6)).gradient)
  for a, b in zip(loose, clean):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  c = 1e-3
  clipped = _leaves(inversion.observe(
      apply_fn, params, x, y, key=0,
      defence=inversion.DPClip(l2_norm_clip=c)).gradient)
  norm = np.sqrt(sum(np.sum(g**2) for g in clipped))
  assert norm <= c * (1 + 1e-5)  # mean of 4 vectors of norm <= C
  noisy = _leaves(inversion.observe(
      apply_fn, params, x, y, key=0,
      defence=inversion.DPClip(l2_norm_clip=c, noise_multiplier=1.0)).gradient)
  diff = np.concatenate([(n - g).ravel() for n, g in zip(noisy, clipped)])
  assert abs(diff.std() / (c / 4) - 1) < 0.05  # σ C / B
  with pytest.raises(ValueError, match="rule"):
    inversion.DPClip(rule="nope")


def test_topk_and_quantize(victim):
  apply_fn, params, x, y = victim
  clean = _leaves(inversion.observe(apply_fn, params, x, y, key=0).gradient)
  pruned = _leaves(inversion.observe(apply_fn, params, x, y, key=0,
                                     defence=inversion.TopK(0.1)).gradient)
  for p, c in zip(pruned, clean):
    kept = np.count_nonzero(p)
    assert kept == max(1, round(0.1 * c.size))
    np.testing.assert_array_equal(p[p != 0], c[p != 0])
    assert np.abs(c[p == 0]).max(initial=0) <= np.abs(p[p != 0]).min()
  quant = _leaves(inversion.observe(apply_fn, params, x, y, key=0,
                                    defence=inversion.Quantize(3)).gradient)
  for q, c in zip(quant, clean):
    assert np.unique(q).size <= 2**3 - 1
    step = np.abs(c).max() / 3
    assert np.abs(q - c).max() <= step / 2 + 1e-7
  composed = inversion.make_defence([inversion.TopK(0.5),
                                     inversion.Quantize(8)])
  assert isinstance(composed, inversion.Compose)
  assert composed.describe()["name"] == "compose"
  with pytest.raises(ValueError, match="at most one"):
    inversion.Compose((inversion.DPClip(), inversion.DPClip()))


def test_register_defence():
  @dataclasses.dataclass(frozen=True)
  class Zero(inversion.Defence):
    name = "zero"

    def post(self, update, key):
      return jax.tree.map(jnp.zeros_like, update)

  inversion.register_defence("zero_test", Zero)
  try:
    assert isinstance(inversion.make_defence("zero_test"), Zero)
    with pytest.raises(ValueError, match="already registered"):
      inversion.register_defence("zero_test", Zero)
  finally:
    del inversion.DEFENCES["zero_test"]


# ----------------------------------------------------------------------------
# Bad input gets a clear error naming the argument.


def test_unknown_defence_and_attack_names(victim):
  apply_fn, params, x, y = victim
  with pytest.raises(ValueError, match="argument 'defence' must be one of"):
    inversion.observe(apply_fn, params, x, y, key=0, defence="blur")
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  with pytest.raises(ValueError, match="argument 'attack' must be one of"):
    inversion.run_attack("deep_magic", obs, key=0)
  with pytest.raises(TypeError, match="unexpected keyword"):
    inversion.run_attack("dlg", obs, key=0, stepz=3)


def test_gradient_structure_shape_and_nan_are_rejected(victim):
  apply_fn, params, x, y = victim
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  good = obs.gradient
  missing = {k: v for k, v in good.items() if k != "head"}
  with pytest.raises(ValueError, match="'gradient' has a different pytree"):
    dataclasses.replace(obs, gradient=missing)
  wrong = {**good, "head": {**good["head"],
                            "kernel": good["head"]["kernel"][:-1]}}
  with pytest.raises(ValueError, match=r"'gradient' leaf .*head.*kernel.* "
                     "has shape"):
    dataclasses.replace(obs, gradient=wrong)
  nan = {**good, "head": {**good["head"],
                          "bias": good["head"]["bias"].at[3].set(jnp.nan)}}
  with pytest.raises(FloatingPointError, match="'gradient' has 1 non-finite"):
    dataclasses.replace(obs, gradient=nan)


def test_batch_size_larger_than_labels_and_bad_images(victim):
  apply_fn, params, x, y = victim
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  with pytest.raises(ValueError, match=r"'batch_size' \(6\) is larger than "
                     r"the number of labels given \(4\)"):
    dataclasses.replace(obs, batch_size=6)
  with pytest.raises(ValueError, match="'labels' has 4 entries"):
    dataclasses.replace(obs, batch_size=2)
  with pytest.raises(ValueError, match=r"'labels' must lie in \[0, 10\)"):
    dataclasses.replace(obs, labels=np.array([0, 1, 2, 10]))
  with pytest.raises(ValueError, match="'labels' must have shape"):
    inversion.observe(apply_fn, params, x, y[:3], key=0)
  with pytest.raises(ValueError, match=r"'images' must lie in \[0, 1\]"):
    inversion.observe(apply_fn, params, x * 255, y, key=0)
  with pytest.raises(ValueError, match="'images' must have rank 4"):
    inversion.observe(apply_fn, params, x[0], y[:1], key=0)
  with pytest.raises(FloatingPointError, match="'images'"):
    inversion.observe(apply_fn, params, np.full_like(x, np.nan), y, key=0)
  with pytest.raises(ValueError, match="'key' is required"):
    inversion.observe(apply_fn, params, x, y, key=None)
  with pytest.raises(ValueError, match="'local_batch_size'"):
    inversion.observe(apply_fn, params, x, y, key=0, local_batch_size=5)
