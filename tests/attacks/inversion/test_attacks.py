"""The attacks end to end on tiny models (8x8 digits)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak.attacks import inversion


@pytest.fixture(scope="module")
def digit(get_model, digits):
  """One digit observed through the sigmoid LeNet (U(-0.5, 0.5) init)."""
  apply_fn, params = get_model("lenet")
  x, y = digits[0][5:6], digits[1][5:6]
  return apply_fn, params, x, y


@pytest.fixture(scope="module")
def idlg_clean(digit):
  apply_fn, params, x, y = digit
  obs = inversion.observe(apply_fn, params, x, y, key=0, reveal_labels=False)
  return inversion.idlg(obs, key=1, steps=100, ground_truth=(x, y))


def test_dlg_recovers_image_and_label(digit):
  apply_fn, params, x, y = digit
  obs = inversion.observe(apply_fn, params, x, y, key=0, reveal_labels=False)
  res = inversion.dlg(obs, key=0, steps=150, ground_truth=(x, y))
  assert res.attack == "dlg" and res.images.shape == x.shape
  assert res.metrics["psnr"] > 30, res.summary()
  assert res.metrics["label_acc"] == 1.0 and res.labels.tolist() == [y[0]]
  assert res.hyperparams["optimizer"] == "lbfgs"
  assert res.loss_history.shape == (150,)
  assert res.loss_history[-1] < 1e-3 * res.loss_history[0]
  assert res.images.min() >= 0.0 and res.images.max() <= 1.0


def test_idlg_recovers_image_with_label_first(idlg_clean, digit):
  res = idlg_clean
  assert res.metrics["psnr"] > 30, res.summary()
  assert res.labels.tolist() == [digit[3][0]] and res.label_confidence == 1.0
  assert res.hyperparams["label_strategy"] == "idlg"
  summary = res.summary()
  assert {"psnr", "ssim", "mse", "label_acc", "wall_time_s"} <= set(summary)
  assert res.wall_time_s > 0


def test_attack_degrades_as_noise_grows(idlg_clean, digit):
  apply_fn, params, x, y = digit
  psnrs = [idlg_clean.metrics["psnr"]]
  for std in (1e-2, 1.0):
    # Noise in multiples of the clean gradient's RMS.
    obs = inversion.observe(apply_fn, params, x, y, key=2,
                            defence=inversion.GaussianNoise(std, True))
    res = inversion.idlg(obs, key=1, steps=100, ground_truth=(x, y))
    psnrs.append(res.metrics["psnr"])
  assert psnrs[0] > psnrs[1] > psnrs[2], psnrs
  assert psnrs[2] < psnrs[0] - 15, psnrs


def test_ground_truth_only_scores_and_loops_agree(digit):
  apply_fn, params, x, y = digit
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  kw = dict(key=3, steps=20, optimizer="adam", lr=0.05,
            label_strategy="known")
  blind = inversion.idlg(obs, **kw)
  scored = inversion.idlg(obs, ground_truth=x, **kw)
  scanned = inversion.idlg(obs, loop="scan", log_every=10, **kw)
  assert blind.metrics is None and scored.metrics["label_acc"] == 1.0
  np.testing.assert_array_equal(blind.images, scored.images)
  np.testing.assert_allclose(scanned.loss_history, blind.loss_history,
                             rtol=1e-4)
  np.testing.assert_allclose(scanned.images, blind.images, atol=1e-4)


def test_inverting_gradients_batch_with_restarts(get_model, digits):
  # A smooth (softplus) ConvNet inverts in few steps; 8x8 digits need no TV.
  apply_fn, params = get_model("convnet", width=4, act="softplus")
  x, y = digits[0][:2], digits[1][:2]
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  calls = []
  res = inversion.inverting_gradients(
      obs, key=0, steps=80, restarts=2, log_every=40, tv=0.0,
      ground_truth=(x, y), callback=lambda r, s, loss: calls.append((r, s)))
  assert calls == [(0, 40), (0, 80), (1, 40), (1, 80)]
  assert len(res.restart_losses) == 2
  assert res.final_loss == min(res.restart_losses)
  assert res.loss_history.shape == (80,)
  assert res.loss_history[-1] < res.loss_history[0]
  assert res.hyperparams["space"] == "box"
  assert res.labels.tolist() == y.tolist() and res.label_confidence == 1.0
  # Far better than the U(0, 1) start (about 5 dB against digits).
  start = inversion.evaluate(np.random.default_rng(0).uniform(size=x.shape),
                             None, x)
  assert res.metrics["psnr"] > start["psnr"] + 10, res.summary()
  assert len(res.metrics["permutation"]) == 2


def test_grad_inversion_uses_the_bn_prior(get_model, digits):
  apply_fn, params = get_model("convnet", width=4, norm="batch")
  x, y = digits[0][:2], digits[1][:2]
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  assert obs.bn_stats is not None and len(obs.bn_stats) == 8
  kw = {"key": 0, "steps": 30, "log_every": 30, "ground_truth": (x, y)}
  res = inversion.grad_inversion(obs, **kw)
  assert res.loss_history[-1] < res.loss_history[0]
  assert np.isfinite(res.metrics["psnr"])
  # The same attack with the BN weight at 0 (same start, same noise): the
  # prior adds bn * R_BN >= 0 to the first loss, and only the attack with
  # the prior drives the reconstruction's BN statistics towards the victim's.
  without = inversion.grad_inversion(obs, bn=0.0, **kw)
  assert res.loss_history[0] > without.loss_history[0] + 1e-3, (
      res.loss_history[0], without.loss_history[0])

  def bn_mismatch(images):
    _, stats = apply_fn.with_bn_stats(params, jnp.asarray(images))
    return float(inversion.bn_matching(stats, obs.bn_stats))

  assert bn_mismatch(res.images) < 0.8 * bn_mismatch(without.images), (
      bn_mismatch(res.images), bn_mismatch(without.images))
  plain, plain_params = get_model("convnet", width=4)
  plain_obs = inversion.observe(plain, plain_params, x, y, key=0)
  with pytest.raises(ValueError, match="needs a model with BatchNorm"):
    inversion.grad_inversion(plain_obs, key=0, steps=1)


def test_batch_64_runs_and_128x128_traces(get_model):
  rng = np.random.default_rng(0)
  for batch, res in ((64, 8), (1, 128)):
    apply_fn, params = get_model("convnet", shape=(res, res, 3), width=2)
    x = rng.uniform(size=(batch, res, res, 3)).astype(np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int32)
    obs = inversion.observe(apply_fn, params, x, y, key=0)
    if batch == 64:
      out = inversion.inverting_gradients(obs, key=0, steps=2, log_every=2)
      assert out.images.shape == x.shape
      assert np.all(np.isfinite(out.loss_history))
    else:
      # Tracing and lowering the full second-order step shows nothing is
      # tied to a resolution; compiling it would only cost test time.
      problem, hp = inversion.make_problem(
          obs, tv=0.2, lr=0.1, distance="cosine", boxed=True, signed=True,
          matmul_conv=True)
      consts = {"params": params, "target": obs.gradient,
                "labels": obs.labels, "hp": hp}
      z = problem.init(jax.random.key(0), consts)
      jax.jit(jax.value_and_grad(problem.objective)).lower(z, consts)


def test_register_attack_plugs_into_run_attack(digit):
  apply_fn, params, x, y = digit
  obs = inversion.observe(apply_fn, params, x, y, key=0)

  def grey(observation, *, key, ground_truth=None, callback=None, level=0.5):
    del key, callback
    images = np.full(observation.batch_shape, level, np.float32)
    labels = np.asarray(observation.labels)
    metrics = (inversion.evaluate(images, labels, ground_truth,
                                  observation.labels)
               if ground_truth is not None else None)
    return inversion.InversionResult("grey", images, labels,
                                     np.zeros(1), 0.0, metrics)

  inversion.register_attack("grey_test", grey)
  try:
    assert "grey_test" in inversion.available_attacks()
    res = inversion.run_attack("grey_test", obs, key=0, level=0.25,
                               ground_truth=x)
    assert float(res.images.mean()) == 0.25
    assert res.metrics["label_acc"] == 1.0
    with pytest.raises(ValueError, match="already registered"):
      inversion.register_attack("grey_test", grey)
  finally:
    del inversion.ATTACKS["grey_test"]


def test_hyperparameter_and_observation_errors(digit):
  apply_fn, params, x, y = digit
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  with pytest.raises(ValueError, match="argument 'steps' must be a positive"):
    inversion.inverting_gradients(obs, key=0, steps=0)
  with pytest.raises(ValueError, match="argument 'init' must be one of"):
    inversion.dlg(obs, key=0, init="zeros")
  with pytest.raises(ValueError, match="argument 'tv' must be finite"):
    inversion.inverting_gradients(obs, key=0, tv=-1.0)
  with pytest.raises(TypeError, match="'observation' must be a "
                     "GradientObservation"):
    inversion.dlg({"gradient": 1}, key=0)
  with pytest.raises(ValueError, match="'ground_truth' must have"):
    inversion.idlg(obs, key=0, steps=1, ground_truth=jnp.zeros((2, 8, 8, 1)))


def test_attacks_refuse_an_all_zero_gradient(digit):
  # Issue 20: a flat loss (e.g. one class) gives an all-zero gradient; the
  # attacks used to "reconstruct" their random start from it.
  apply_fn, params, x, y = digit
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  zero = dataclasses.replace(
      obs, gradient=jax.tree.map(jnp.zeros_like, obs.gradient))
  for name in ("dlg", "idlg", "inverting_gradients", "grad_inversion",
               "diffusion_dps", "diffusion_dsg"):
    with pytest.raises(ValueError, match=f"{name}: the observed gradient is "
                       "all zeros"):
      inversion.run_attack(name, zero, key=0, steps=2)


def _bias_only(params, x):
  """A "classifier" whose logits ignore the image: its gradient is constant."""
  return jnp.broadcast_to(params["params"]["head"]["bias"],
                          (x.shape[0],) + params["params"]["head"]["bias"].shape)


def test_attack_refuses_an_objective_that_is_zero_at_the_start(digits):
  # The gradient (w.r.t. the bias) is non-zero but the same for every image,
  # so every candidate matches it exactly: nothing to reconstruct.
  x, y = digits[0][:1], digits[1][:1]
  params = {"params": {"head": {"bias": jnp.zeros((10,))}}}
  obs = inversion.observe(_bias_only, params, x, y, key=0)
  with pytest.raises(ValueError, match="idlg: the objective is exactly 0 at "
                     "the initial candidate"):
    inversion.idlg(obs, key=0, steps=3, log_every=1, optimizer="adam",
                   label_strategy="known")


def test_observation_needs_two_classes(digits):
  x, y = digits[0][:1], np.zeros(1, np.int32)
  params = {"params": {"head": {"bias": jnp.zeros((1,))}}}
  with pytest.raises(ValueError, match="'num_classes' must be >= 2, got 1"):
    inversion.observe(_bias_only, params, x, y, key=0)


def test_attacks_are_option_sets_of_one_attacker(digit):
  apply_fn, params, x, y = digit
  obs = inversion.observe(apply_fn, params, x, y, key=0, reveal_labels=False)
  # Each classic attack is registered by its module and is exactly
  # `gradient_matching` with its configuration.
  for name, config in inversion.NAMED_ATTACKS.items():
    assert inversion.get_attack(name).config is config
  config = inversion.NAMED_ATTACKS["idlg"].replace(steps=5, optimizer="adam",
                                                   lr=0.05)
  direct = inversion.gradient_matching(obs, config, key=3, name="idlg")
  named = inversion.idlg(obs, key=3, steps=5, optimizer="adam", lr=0.05)
  np.testing.assert_array_equal(direct.images, named.images)
  np.testing.assert_array_equal(direct.loss_history, named.loss_history)
  assert named.hyperparams["label_strategy"] == "idlg"
  assert named.hyperparams["space"] == "free"
  assert inversion.dlg.config.label_strategy == "joint"
  with pytest.raises(TypeError, match="dlg.. got an unexpected keyword "
                     "argument 'tv'"):
    inversion.dlg(obs, key=0, tv=0.1)
  with pytest.raises(TypeError, match="unknown option"):
    config.replace(colour="red")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["dlg", "idlg", "inverting_gradients",
                                  "grad_inversion"])
def test_run_attack_rejects_a_non_finite_learning_rate(digit, name, bad):
  """Item 2: run_attack(name, lr=nan/inf) is a ValueError naming 'lr'."""
  apply_fn, params, x, y = digit
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  with pytest.raises(ValueError, match=f"{name}: argument 'lr' must be "
                     "finite"):
    inversion.run_attack(name, obs, key=0, lr=bad, steps=1)


@pytest.mark.parametrize("option", ["distance_scale", "tv", "l2", "bn",
                                    "bn_first_layer_scale", "langevin"])
def test_run_attack_rejects_non_finite_weights(digit, option):
  """Item 2: NaN/Inf objective weights and noise are named, not optimised."""
  apply_fn, params, x, y = digit
  obs = inversion.observe(apply_fn, params, x, y, key=0)
  for bad in (float("nan"), float("inf")):
    with pytest.raises(ValueError, match=f"gradient_matching: argument "
                       f"'{option}' must be finite"):
      inversion.gradient_matching(obs, inversion.AttackConfig(
          steps=1, **{option: bad}), key=0)


def test_observation_and_defences_reject_non_finite_values(digit):
  """Item 2: the victim's local lr and the defences' noise must be finite."""
  apply_fn, params, x, y = digit
  for bad in (float("nan"), float("inf")):
    with pytest.raises(ValueError, match="observe: argument 'local_lr' must "
                       "be finite"):
      inversion.observe(apply_fn, params, x, y, key=0, local_steps=2,
                        local_lr=bad)
    with pytest.raises(ValueError, match="GaussianNoise: argument 'std' must "
                       "be finite"):
      inversion.GaussianNoise(std=bad)
    with pytest.raises(ValueError, match="DPClip: argument 'noise_multiplier' "
                       "must be finite"):
      inversion.DPClip(l2_norm_clip=1.0, noise_multiplier=bad)
