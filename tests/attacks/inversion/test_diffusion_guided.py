"""Gradient-guided diffusion attacks (diffusion_dps, diffusion_dsg).

A tiny unconditional 16x16 UNet with random weights (one level, no attention,
params drawn with NumPy so no initialiser is compiled) stands in for a
trained prior, and a 16x16 MLP (12x12 for the resize test) for the victim.
Compilation dominates, so sampler configurations are shared between tests
where possible and runs use 3-4 sampling steps.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import diffusion
from jaxleak.attacks import inversion
from jaxleak.attacks.inversion import diffusion_guided as dg

STEPS = 4


@pytest.fixture(scope="module")
def victim(mlp_victim_16px):
  """An MLP victim and one private 16x16 image with its observation."""
  return mlp_victim_16px((32,))


def _consts(prior, obs, hp):
  return {"prior": prior.params, "victim": obs.params,
          "target": obs.gradient, "labels": jnp.asarray([2], jnp.int32),
          "cond": None, "schedule": prior.schedule,
          "hp": {k: jnp.asarray(v, jnp.float32) for k, v in hp.items()}}


def _reference(prior, key, eta):
  """The unguided sampler of jaxleak.diffusion with the attack's keys."""
  k_init, k_steps = jax.random.split(key)
  x_t = jax.random.normal(k_init, (1, 16, 16, 1), jnp.float32)
  ts = diffusion.ddim_timesteps(1000, STEPS)
  eps_fn = diffusion.make_eps_fn(prior.apply_fn, prior.params)
  step = diffusion.ddim_step_fn(prior.schedule, eps_fn, eta=eta, clip_x0=True)
  return np.asarray(jax.jit(lambda x, k: diffusion.sample_loop(step, x, ts, k))(
      x_t, k_steps))


def test_registered():
  assert {"diffusion_dps", "diffusion_dsg"} <= set(
      inversion.available_attacks())


@pytest.mark.parametrize("method,hp,eta", [
    ("dsg", {"zeta": 0.0, "rate": 0.0}, 1.0),
    ("dps", {"zeta": 0.0, "rate": 0.0}, 0.0),
])
def test_zero_guidance_reproduces_unconditional_sampling(prior, victim, method,
                                                         hp, eta):
  obs, _ = victim
  key = jax.random.key(7)
  sampler = dg.make_sampler(method, prior, obs, eta=eta, num_steps=STEPS)
  ts = diffusion.ddim_timesteps(1000, STEPS)
  x0, traj, ds = dg.run_guided_sampler(sampler, _consts(prior, obs, hp), key,
                                       timesteps=ts)
  ref = _reference(prior, key, eta)
  # Same arithmetic in a different program: equal up to float rounding.
  np.testing.assert_allclose(np.asarray(x0), ref, rtol=0, atol=1e-5)
  assert traj.shape == (STEPS, 1, 16, 16, 1) and ds.shape == (STEPS,)
  # The attack's own unguided sampler (no backward pass in its program)
  # agrees to the same rounding, and so do the gradient distances.
  plain = dg.make_sampler("none", prior, obs, eta=eta, num_steps=STEPS)
  x_plain, _, ds_plain = dg.run_guided_sampler(
      plain, _consts(prior, obs, hp), key, timesteps=ts)
  np.testing.assert_allclose(np.asarray(x0), np.asarray(x_plain), rtol=0,
                             atol=1e-5)
  # A distance sums ~1e4 squared differences whose order XLA may change
  # between the two programs: 1e-5 relative was seen on a fresh install.
  np.testing.assert_allclose(np.asarray(ds), np.asarray(ds_plain), rtol=1e-4)


def test_guidance_lowers_gradient_distance(prior, victim):
  obs, x = victim
  base = inversion.run_attack("diffusion_dsg", obs, key=1, prior=prior,
                              steps=STEPS, guidance_rate=0.0,
                              ground_truth=x)
  dsg = inversion.run_attack("diffusion_dsg", obs, key=1, prior=prior,
                             steps=STEPS, guidance_rate=0.5, ground_truth=x)
  base_dps = inversion.run_attack("diffusion_dps", obs, key=1, prior=prior,
                                  steps=STEPS, zeta=0.0, ground_truth=x)
  dps = inversion.run_attack("diffusion_dps", obs, key=1, prior=prior,
                             steps=STEPS, zeta=2.0, ground_truth=x)
  for r in (base, dsg, base_dps, dps):
    assert isinstance(r, inversion.InversionResult)
    assert r.images.shape == (1, 16, 16, 1)
    assert r.images.min() >= 0 and r.images.max() <= 1
    assert r.trajectory.shape == (STEPS, 1, 16, 16, 1)
    assert np.all(np.isfinite(r.loss_history))
    assert set(r.metrics) >= {"psnr", "ssim", "mse"}
  assert dsg.final_loss < base.final_loss
  assert dps.final_loss < base_dps.final_loss
  assert dsg.hyperparams["guidance_rate"] == 0.5
  assert list(dsg.timesteps) == list(diffusion.ddim_timesteps(1000, STEPS))


def test_dsg_steps_lie_on_the_sphere(prior, victim):
  obs, _ = victim
  consts = _consts(prior, obs, {"zeta": 0.0, "rate": 1.0})
  x_t = jax.random.normal(jax.random.key(0), (1, 16, 16, 1))
  t, tp = jnp.asarray(600), jnp.asarray(400)
  for radius in ("fixed", "sample"):
    s = dg.make_sampler("dsg", prior, obs, eta=1.0, radius=radius,
                        num_steps=STEPS)
    x_prev, _, _ = s.step(consts, x_t, t, tp, jnp.asarray(0),
                          jax.random.key(1))
    eps = prior.apply_fn(prior.params, x_t, t)
    out = s.transition(prior.schedule, x_t, t, tp, eps, jnp.zeros_like(x_t))
    dist = float(jnp.linalg.norm(x_prev - out.mean))
    sigma = float(jnp.max(out.std))
    if radius == "fixed":
      np.testing.assert_allclose(dist, 16 * sigma, rtol=1e-4)
    else:  # the realised noise norm: close to sqrt(n) sigma
      assert abs(dist / (16 * sigma) - 1) < 0.15


def test_ddpm_transition_is_ddpm_step_at_full_resolution(prior, victim):
  obs, _ = victim
  s = dg.make_sampler("none", prior, obs, sampler="ddpm")
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 1))
  eps = jax.random.normal(jax.random.key(1), x.shape)
  z = jax.random.normal(jax.random.key(2), x.shape)
  for t in (999, 500, 1):
    ours = s.transition(prior.schedule, x, jnp.asarray(t), jnp.asarray(t - 1),
                        eps, z)
    ref = diffusion.ddpm_step(prior.schedule, x, jnp.asarray(t), eps, z)
    # beta' = 1 - ab_t / ab_{t-1} cancels in float32 (5e-4 relative at t=1).
    np.testing.assert_allclose(ours.x_prev, ref.x_prev, atol=1e-4, rtol=1e-3)
  last = s.transition(prior.schedule, x, jnp.asarray(0), jnp.asarray(-1),
                      eps, z)
  np.testing.assert_allclose(last.x_prev, last.x0_hat, atol=1e-6)


def test_resolution_mismatch_and_label_recovery(prior, get_model):
  # A 12x12 victim against the 16x16 prior: A resizes; labels recovered.
  apply_fn, params = get_model("mlp", shape=(12, 12, 1), hidden=(32,))
  x = jax.random.uniform(jax.random.key(4), (1, 12, 12, 1))
  obs = inversion.observe(apply_fn, params, x, np.array([5]), key=0,
                          reveal_labels=False)
  r = inversion.run_attack("diffusion_dps", obs, key=0, prior=prior,
                           steps=3, sampler="ddpm", distance="cosine",
                           ground_truth=(x, np.array([5])), zeta=0.5)
  assert r.images.shape == (1, 12, 12, 1)
  assert r.trajectory.shape == (3, 1, 12, 12, 1)
  assert r.labels.tolist() == [5] and r.metrics["label_acc"] == 1.0
  assert r.hyperparams["label_strategy"] == "idlg"


def test_bad_arguments_name_the_argument(prior, victim):
  obs, _ = victim
  with pytest.raises(ValueError, match="'eta'"):
    inversion.run_attack("diffusion_dsg", obs, key=0, prior=prior, eta=0.0)
  with pytest.raises(ValueError, match="'guidance_rate'"):
    inversion.run_attack("diffusion_dsg", obs, key=0, prior=prior,
                         guidance_rate=1.5)
  with pytest.raises(ValueError, match="'sampler'"):
    inversion.run_attack("diffusion_dps", obs, key=0, prior=prior,
                         sampler="euler")
  with pytest.raises(ValueError, match="'steps'"):
    inversion.run_attack("diffusion_dps", obs, key=0, prior=prior, steps=0)


def test_cli_diffusion_attack_writes_trajectory_png(prior, tmp_path):
  from jaxleak.cli import main as cli  # pylint: disable=g-import-not-at-top
  folder = diffusion.save_prior(prior, tmp_path / "prior", format="orbax")
  workdir = tmp_path / "run"
  code = cli.main([
      "attack", "--attack", "diffusion_dsg", "--prior", str(folder),
      "--model", "mlp", "--dataset", "digits", "--steps", "3",
      "--guidance-rate", "0.3", "--defence", "gaussian", "--noise-std",
      "1e-2", "--relative-noise", "--workdir", str(workdir),
      "--no-progress", "--fast-compile"])
  assert code == 0
  for name in ("ground_truth_vs_reconstruction.png", "loss_curve.png",
               "metrics.json", "report.md", "x0_trajectory.png"):
    assert (workdir / name).stat().st_size > 0, name
  text = (workdir / "report.md").read_text()
  assert "x0_hat trajectory" in text and "guidance_rate" in text


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("attack, option", [
    ("diffusion_dps", "zeta"), ("diffusion_dps", "eta"),
    ("diffusion_dsg", "guidance_rate"), ("diffusion_dsg", "eta"),
])
def test_non_finite_guidance_is_named_before_sampling(prior, victim, attack,
                                                      option, bad):
  """Item 2: run_attack with NaN/Inf guidance or eta names the argument."""
  obs, _ = victim
  with pytest.raises(ValueError, match=f"{attack}: argument '{option}' must "
                     "(be finite|be in)"):
    inversion.run_attack(attack, obs, key=0, prior=prior, steps=STEPS,
                         **{option: bad})
