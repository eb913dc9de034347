"""User-level inversion with a diffusion prior (user_level_diffusion).

A tiny unconditional 16x16 UNet with random weights (params drawn with NumPy,
as in test_diffusion_guided) stands in for a trained prior and a 16x16 MLP
for the victim. The central check: with a window covering the rest of the
chain, the sliding-window objective and its gradient equal those of the full
deterministic DDIM chain written independently with `diffusion.ddim_step`.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import diffusion
from jaxleak.attacks import inversion
from jaxleak.attacks.inversion import user_level as ul

STEPS = 4




@pytest.fixture(scope="module")
def user(get_model):
  """An MLP victim and one user's batch of 6 images, 4 of them class 2."""
  apply_fn, params = get_model("mlp", shape=(16, 16, 1), hidden=(32,))
  x = jax.random.uniform(jax.random.key(3), (6, 16, 16, 1))
  y = np.array([2, 2, 5, 2, 7, 2])
  return apply_fn, params, np.asarray(x), y


def _problem(prior, obs, window, clip_x0=True):
  return ul.RepresentativeProblem(
      unet_apply=prior.apply_fn, victim_apply=obs.apply_fn,
      prior_shape=prior.image_shape, victim_shape=obs.image_shape,
      window=window, clip_x0=clip_x0)


def _consts(prior, obs, window, label=2):
  ts = diffusion.ddim_timesteps(1000, STEPS)
  padded = np.concatenate([ts, -np.ones(window + 1, np.int32)])
  return {"prior": prior.params, "victim": obs.params,
          "target": obs.gradient, "schedule": prior.schedule,
          "timesteps": jnp.asarray(padded), "cond": None,
          "label": jnp.asarray(label), "tv": jnp.asarray(0.0)}


def _full_chain_loss(prior, obs, z, start, label=2):
  """The objective through the whole chain from index `start` (reference)."""
  ts = diffusion.ddim_timesteps(1000, STEPS)
  x = z
  for i in range(start, STEPS):
    t_prev = ts[i + 1] if i + 1 < STEPS else -1
    eps = prior.apply_fn(prior.params, x, jnp.full((1,), ts[i]), None)
    x = diffusion.ddim_step(prior.schedule, x, ts[i], t_prev, eps,
                            clip_x0=True).x_prev
  img = (x + 1.0) / 2.0
  grads = inversion.victim_gradient(obs.apply_fn, obs.params, img,
                                    jnp.full((1,), label, jnp.int32))
  return inversion.cosine_distance(grads, obs.gradient)


def _jit(fun):
  return jax.jit(fun, compiler_options=dict(inversion.FAST_COMPILE))


def test_window_covering_chain_equals_full_chain_gradient(prior, user):
  apply_fn, params, x, y = user
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  z = jax.random.normal(jax.random.key(1), (1, 16, 16, 1))
  # One program (window = S) for both starts: from z_T the window is the
  # whole chain; from index 2 it overhangs by two identity (t = -1) steps.
  problem = _problem(prior, obs, STEPS)
  value_and_grad = _jit(jax.value_and_grad(problem.loss))
  consts = _consts(prior, obs, STEPS)
  for start in (0, 2):
    loss, grad = value_and_grad(z, consts, jnp.asarray(start))
    ref_loss, ref_grad = _jit(jax.value_and_grad(
        lambda z, s=start: _full_chain_loss(prior, obs, z, s)))(z)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert float(jnp.linalg.norm(ref_grad)) > 0
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-4,
                               atol=2e-4 * float(jnp.abs(ref_grad).max()))


def test_stepwise_gradient_equals_fused(prior, user):
  apply_fn, params, x, y = user
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  z = jax.random.normal(jax.random.key(2), (1, 16, 16, 1))
  problem = _problem(prior, obs, 2)
  consts = _consts(prior, obs, 2)
  ts = [jnp.asarray(v) for v in np.asarray(consts["timesteps"])]
  fused = _jit(jax.value_and_grad(problem.loss))
  for start in (1, 3):  # Inside the chain; overhanging its end.
    loss, grad = ul.stepwise_value_and_grad(problem, consts, ts, z, start)
    ref_loss, ref_grad = fused(z, consts, jnp.asarray(start))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-4,
                               atol=2e-4 * float(jnp.abs(ref_grad).max()))


def test_short_window_uses_tweedie_estimate(prior, user):
  apply_fn, params, x, y = user
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  z = jax.random.normal(jax.random.key(1), (1, 16, 16, 1))
  consts = _consts(prior, obs, 1)
  x0 = _jit(_problem(prior, obs, 1).decode)(consts, z, jnp.asarray(0))
  # One DDIM step, then x0_hat at the chain's second timestep.
  ts = diffusion.ddim_timesteps(1000, STEPS)
  eps = prior.apply_fn(prior.params, z, jnp.full((1,), ts[0]), None)
  x1 = diffusion.ddim_step(prior.schedule, z, ts[0], ts[1], eps,
                           clip_x0=True).x_prev
  eps1 = prior.apply_fn(prior.params, x1, jnp.full((1,), ts[1]), None)
  ref = diffusion.x0_hat(prior.schedule, x1, ts[1], eps1)
  np.testing.assert_allclose(x0, ref, rtol=1e-4, atol=1e-4)


def test_attack_end_to_end_tiny(prior, user):
  apply_fn, params, x, y = user
  obs = inversion.observe(apply_fn, params, x, y, key=0,
                          reveal_labels=False)
  seen = []
  res = inversion.run_attack(
      "user_level_diffusion", obs, key=0, prior=prior, steps=STEPS,
      stages=((0, 3), (2, 2)), window=2, lr=0.1, num_representatives=2,
      loop="stepwise",
      ground_truth=(x, y), callback=lambda *a: seen.append(a), log_every=1)
  assert isinstance(res, inversion.UserLevelResult)
  assert res.images.shape == (2, 16, 16, 1)
  assert res.images.min() >= 0 and res.images.max() <= 1
  assert res.majority_label == 2 and res.labels.tolist() == [2, 2]
  assert res.hyperparams["label_strategy"] == "bias_gradient"
  assert res.metrics["majority_label_correct"] is True
  assert -1 <= res.metrics["mean_ssim_to_batch"] <= 1
  assert len(res.loss_history) == 5 and np.all(np.isfinite(res.loss_history))
  assert [s[:2] for s in seen] == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5)]
  ts = diffusion.ddim_timesteps(1000, STEPS)
  assert res.stage_timesteps == (int(ts[0]), int(ts[2]))
  # Adam decreases the objective within the first stage.
  assert res.loss_history[2] < res.loss_history[0]


def test_majority_label_known_and_recovered(user):
  apply_fn, params, x, y = user
  known = inversion.observe(apply_fn, params, x, y, key=0)
  assert ul.majority_label(known)[:2] == (2, 4 / 6)
  hidden = inversion.observe(apply_fn, params, x, y, key=0,
                             reveal_labels=False)
  label, confidence, how = ul.majority_label(hidden)
  assert (label, how) == (2, "bias_gradient") and 0.5 < confidence <= 1


def test_default_stages():
  assert ul.default_stages(20, 200) == ((0, 100), (4, 60), (8, 40))
  assert ul.default_stages(2, 10) == ((0, 10),)
  assert sum(n for _, n in ul.default_stages(50, 37)) == 37


@pytest.mark.parametrize("kwargs,match", [
    ({"window": 0}, "'window' must be a positive int"),
    ({"window": 5}, r"'window' \(5\) must not exceed the chain length"),
    ({"stages": ((0, 2), (0, 1))}, "strictly increasing starts"),
    ({"stages": ((2, 2), (1, 1))}, "strictly increasing starts"),
    ({"stages": ((4, 2),)}, r"start 4 outside the chain's indices \[0, 4\)"),
    ({"stages": ((0, 0),)}, "0 iterations at start 0"),
    ({"stages": ()}, "at least one"),
    ({"stages": 3}, "sequence of \\(start, iterations\\) pairs"),
    ({"distance": "l1"}, "'distance' must be one of"),
    ({"loop": "scan"}, "'loop' must be one of"),
    ({"lr": -1.0}, "'lr'"),
    ({"num_representatives": 0}, "'num_representatives'"),
    ({"steps": 1001}, "'steps'"),
])
def test_bad_arguments(prior, user, kwargs, match):
  apply_fn, params, x, y = user
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  kw = {"prior": prior, "steps": STEPS, **kwargs}
  with pytest.raises(ValueError, match=match):
    ul.user_level_diffusion(obs, key=0, **kw)


def test_bad_observation_and_ground_truth(prior, user):
  apply_fn, params, x, y = user
  with pytest.raises(TypeError, match="'observation' must be a Gradient"):
    ul.user_level_diffusion(object(), key=0, prior=prior)
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  with pytest.raises(ValueError, match="'ground_truth' must have the user"):
    ul.user_level_diffusion(obs, key=0, prior=prior, steps=STEPS,
                            ground_truth=x[:2])


@pytest.fixture(scope="module")
def cond_prior():
  """A tiny random-weight class-conditional prior (16x16x1, 3 classes)."""
  spec = diffusion.UNetSpec(resolution=16, channels=1,
                            block_out_channels=(32,), num_classes=3)
  shapes = jax.eval_shape(lambda k: diffusion.init_unet(spec, k),
                          jax.random.key(0))
  rng = np.random.default_rng(1)
  params = jax.tree.map(
      lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype),
      shapes)
  # A strong class embedding, so that the label visibly changes eps.
  params["class_embedding"] = jnp.asarray(
      5.0 * rng.standard_normal(params["class_embedding"].shape),
      jnp.float32)
  return diffusion.Prior("tiny_cond", spec, params,
                         diffusion.linear_schedule(1000))


def test_guided_eps_is_classifier_free_guidance(cond_prior):
  p = cond_prior
  problem = ul.RepresentativeProblem(
      unet_apply=p.apply_fn, victim_apply=None, prior_shape=p.image_shape,
      victim_shape=p.image_shape, guidance_scale=4.0)
  x = jax.random.normal(jax.random.key(5), (2, 16, 16, 1))
  cond = ul._condition(1, 2, p, 4.0)  # pylint: disable=protected-access
  assert cond.tolist() == [1, 1, 3, 3]  # Labels, then the null class.
  t = jnp.asarray(600)
  got = _jit(problem.guided_eps)(p.params, x, t, cond)
  e_c = p.apply_fn(p.params, x, jnp.full((2,), 600), jnp.full((2,), 1))
  e_n = p.apply_fn(p.params, x, jnp.full((2,), 600), jnp.full((2,), 3))
  assert float(jnp.abs(e_c - e_n).max()) > 1e-3  # The label matters.
  np.testing.assert_allclose(got, e_n + 4.0 * (e_c - e_n), rtol=1e-5,
                             atol=1e-5)


def test_prior_representative_label(cond_prior, prior):
  a = ul.prior_representative(cond_prior, 0, (16, 16, 1), steps=3, label=0)
  b = ul.prior_representative(cond_prior, 0, (16, 16, 1), steps=3, label=2,
                              guidance_scale=3.0)
  assert a.shape == b.shape == (1, 16, 16, 1)
  assert float(np.abs(a - b).max()) > 1e-3
  with pytest.raises(ValueError, match="unconditional"):
    ul.prior_representative(prior, 0, (16, 16, 1), steps=3, label=0)
  with pytest.raises(ValueError, match="label"):
    ul.prior_representative(cond_prior, 0, (16, 16, 1), steps=3, label=3)


def test_select_start_picks_the_best_candidate(prior, user):
  apply_fn, params, x, y = user
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  problem = _problem(prior, obs, 1)
  consts = _consts(prior, obs, 1)
  z = jax.random.normal(jax.random.key(7), (1, 16, 16, 1))
  best, losses = ul.select_start(problem, consts, z, 3, jax.random.key(8),
                                 STEPS)
  assert len(losses) == 3 and len(set(losses)) == 3
  # Candidate 0 is z; every loss is the objective at the chain's output.
  ref = [float(_full_chain_loss(prior, obs, c, 0)) for c in (
      z, *jnp.split(jax.random.normal(jax.random.key(8), (2, 16, 16, 1)),
                    2))]
  np.testing.assert_allclose(losses, ref, rtol=1e-4, atol=1e-5)
  i = int(np.argmin(losses))
  np.testing.assert_array_equal(best, z if i == 0 else jax.random.normal(
      jax.random.key(8), (2, 16, 16, 1))[i - 1:i])
