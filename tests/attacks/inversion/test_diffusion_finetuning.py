"""Gradient-guided diffusion fine-tuning (diffusion_finetune).

A tiny unconditional 16x16 UNet (one level of 32 channels, no attention,
weights drawn with NumPy so no initialiser is compiled) stands in for a
pretrained prior and a one-hidden-layer MLP for the victim; chains have 3
DDIM steps. Compilation dominates, so tests share shapes and problems.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import diffusion
from jaxleak.attacks import inversion
from jaxleak.attacks.inversion import diffusion_finetuning as dft

STEPS = 3


@pytest.fixture(scope="module")
def victim(mlp_victim_16px):
  return mlp_victim_16px((16,))


def _problem_and_consts(prior, obs, trainable="all", timesteps=None,
                        clip_x0=True, rank=2):
  problem = dft.FinetuneProblem(
      unet_apply=prior.apply_fn, victim_apply=obs.apply_fn,
      trainable=trainable, distance="cosine+l2", clip_x0=clip_x0)
  theta = dft.split_trainable(prior.params, trainable, rank=rank,
                              key=jax.random.key(1))
  if timesteps is None:
    timesteps = diffusion.ddim_timesteps(1000, STEPS)
  consts = {"frozen": prior.params, "theta0": theta,
            "x_T": jax.random.normal(jax.random.key(5), (1, 16, 16, 1)),
            "timesteps": jnp.asarray(timesteps, jnp.int32), "cond": None,
            "schedule": prior.schedule, "victim": obs.params,
            "target": obs.gradient, "labels": jnp.asarray([2], jnp.int32),
            "hp": {"tv": jnp.float32(0.01), "proximity": jnp.float32(0.1)}}
  return problem, theta, consts


def test_registered():
  assert "diffusion_finetune" in inversion.available_attacks()


def test_gradient_through_ddim_chain_matches_finite_differences(prior, victim):
  obs, _ = victim
  # Timesteps below T-1 keep 1/sqrt(alpha_bar) moderate, and no clipping
  # keeps the chain smooth, so float32 central differences are accurate.
  problem, theta, consts = _problem_and_consts(
      prior, obs, timesteps=[600, 300, 0], clip_x0=False)
  # One compiled program for the values and the gradient.
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda th: problem.loss(th, consts)[0]))
  _, grads = value_and_grad(theta)

  def loss(th):
    return value_and_grad(th)[0]

  for name in ("conv_in/kernel", "up_blocks_0/resnets_0/conv1/kernel",
               "conv_out/bias"):
    # Along the (unit) gradient direction the directional derivative is
    # large against float32 rounding of the loss; a wrong gradient would
    # not be matched by the loss's actual change along it.
    direction = {k: jnp.zeros_like(v) for k, v in theta.items()}
    direction[name] = grads[name] / jnp.linalg.norm(grads[name])
    h = 1e-2
    plus = {k: v + h * direction[k] for k, v in theta.items()}
    minus = {k: v - h * direction[k] for k, v in theta.items()}
    fd = (float(loss(plus)) - float(loss(minus))) / (2 * h)
    analytic = float(jnp.vdot(grads[name], direction[name]))
    assert analytic > 0.1  # the check is not vacuous
    np.testing.assert_allclose(analytic, fd, rtol=5e-3)


def test_lr_zero_output_is_plain_ddim_sampling(prior, victim):
  obs, x = victim
  r = inversion.run_attack("diffusion_finetune", obs, key=4, prior=prior,
                           steps=2, lr=0.0, sampling_steps=STEPS,
                           ground_truth=x, snapshots=3)
  k_noise, _, _ = jax.random.split(jax.random.key(4), 3)
  x_T = jax.random.normal(k_noise, (1, 16, 16, 1), jnp.float32)
  ref = diffusion.ddim_sample(prior.apply_fn, prior.params, prior.schedule,
                              x_T, num_steps=STEPS, clip_x0=False)
  ref = np.clip((np.asarray(ref) + 1) / 2, 0, 1)
  np.testing.assert_allclose(r.images, ref, rtol=0, atol=1e-5)
  # The lax.scan chain is the same map.
  scan = jax.jit(lambda p, x: dft.ddim_chain(
      prior.apply_fn, p, prior.schedule, x,
      diffusion.ddim_timesteps(1000, STEPS), clip_x0=False, loop="scan"))
  np.testing.assert_allclose(
      np.clip((np.asarray(scan(prior.params, x_T)) + 1) / 2, 0, 1), ref,
      rtol=0, atol=1e-5)
  assert r.snapshots.shape == (3, 1, 16, 16, 1)
  assert r.snapshot_steps.tolist() == [0, 1, 2]
  np.testing.assert_allclose(r.snapshots[-1], ref, rtol=0, atol=1e-5)
  assert len(r.loss_history) == 3 and np.ptp(r.loss_history) < 1e-5
  assert set(r.metrics) >= {"psnr", "ssim"}


def test_lora_rank_zero_leaves_unet_unchanged(prior):
  theta = dft.split_trainable(prior.params, "lora", rank=0)
  assert theta and all(v["a"].shape[1] == 0 for v in theta.values())
  merged = dft.merge_trainable(prior.params, theta, "lora")
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(prior.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Rank > 0 starts at the prior too (B = 0); a non-zero B adds A B.
  theta2 = dft.split_trainable(prior.params, "lora", rank=2)
  merged2 = dft.merge_trainable(prior.params, theta2, "lora")
  for a, b in zip(jax.tree.leaves(merged2), jax.tree.leaves(prior.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  path = "conv_in/kernel"
  theta2[path] = {"a": theta2[path]["a"],
                  "b": jnp.ones_like(theta2[path]["b"])}
  w = dft.merge_trainable(prior.params, theta2, "lora")["unet"]["conv_in"][
      "kernel"]
  w0 = prior.params["unet"]["conv_in"]["kernel"]
  delta = (theta2[path]["a"] @ theta2[path]["b"]).reshape(w0.shape)
  np.testing.assert_allclose(w, w0 + delta, rtol=1e-6)
  assert float(jnp.abs(delta).max()) > 0


def test_finetuning_lowers_the_gradient_distance(prior, victim):
  obs, x = victim
  # Same program as the lr = 0 test (the learning rate is traced state).
  r = inversion.run_attack("diffusion_finetune", obs, key=4, prior=prior,
                           steps=12, lr=3e-3, sampling_steps=STEPS,
                           ground_truth=x, snapshots=2)
  assert r.images.shape == (1, 16, 16, 1)
  assert r.final_loss < 0.9 * r.loss_history[0]
  assert r.hyperparams["trainable"] == "all"
  assert r.hyperparams["trainable_params"] == diffusion.param_count(
      prior.params["unet"])
  # The reconstruction is the lowest-loss iterate.
  assert r.final_loss == pytest.approx(float(np.min(r.loss_history)))


def test_subsets_and_lifting(prior):
  full = dft.split_trainable(prior.params, "all")
  up = dft.split_trainable(prior.params, "up")
  assert set(up) < set(full)
  assert all(k.split("/")[0] in ("up_blocks_0", "conv_norm_out", "conv_out")
             for k in up)
  spec, lifted = dft.lift_prior(prior.spec, prior.params, 16, 3)
  assert spec.resolution == 16 and spec.channels == 3
  assert lifted["unet"]["conv_in"]["kernel"].shape[2] == 3
  assert dft.lift_prior(prior.spec, prior.params, 64, 1)[0].resolution == 64
  # A grey image repeated over RGB gives the grey prior's prediction on
  # every channel.
  x = jax.random.normal(jax.random.key(0), (1, 16, 16, 1))
  grey = prior.apply_fn(prior.params, x, jnp.asarray(500))
  eps = diffusion.make_unet_apply(spec)(lifted, jnp.repeat(x, 3, -1),
                                        jnp.asarray(500))
  np.testing.assert_allclose(np.asarray(eps),
                             np.repeat(np.asarray(grey), 3, -1), atol=1e-4)


def test_bad_resolution_and_subset_names(prior, victim, get_model):
  obs, _ = victim
  with pytest.raises(ValueError, match="'trainable'"):
    inversion.run_attack("diffusion_finetune", obs, key=0, prior=prior,
                         trainable="middle")
  with pytest.raises(ValueError, match="'distance'"):
    inversion.run_attack("diffusion_finetune", obs, key=0, prior=prior,
                         distance="l1")
  with pytest.raises(ValueError, match="'rank'"):
    dft.split_trainable(prior.params, "lora", rank=-1)
  with pytest.raises(ValueError, match="'up_blocks'"):
    dft.split_trainable(prior.params, "up", up_blocks=3)
  spec = diffusion.UNetSpec(resolution=32, channels=3,
                            block_out_channels=(32, 32, 64))
  with pytest.raises(ValueError, match=r"'resolution' \(18\).*factor 4"):
    dft.check_resolution(spec, (18, 18, 3), "diffusion_finetune")
  with pytest.raises(ValueError, match="square"):
    dft.check_resolution(spec, (16, 32, 3), "diffusion_finetune")
  # Through the attack: an 18x18 victim against the random 3-level UNet.
  apply_fn, params = get_model("mlp", shape=(18, 18, 1), hidden=(8,))
  obs18 = inversion.observe(apply_fn, params, np.zeros((1, 18, 18, 1)),
                            np.array([1]), key=0)
  with pytest.raises(ValueError, match=r"diffusion_finetune: argument "
                     r"'resolution' \(18\)"):
    inversion.run_attack("diffusion_finetune", obs18, key=0, prior="random")


def _snapshot_attack(observation, *, key, ground_truth=None, callback=None,
                     steps=4, sampling_steps=10, trainable="all", rank=4):
  """A stand-in (no compilation) returning a `FinetuneInversionResult`."""
  del key, sampling_steps, trainable, rank
  callback(0, steps, 0.5)
  images = np.full(observation.batch_shape, 0.4, np.float32)
  labels = inversion.recover_labels(observation, "known").labels
  return dft.FinetuneInversionResult(
      "snapshot_test", images, labels, np.linspace(1, 0.5, steps + 1), 0.1,
      inversion.evaluate(images, labels, *ground_truth),
      hyperparams={"prior": "lfw_faces"},
      snapshots=np.stack([images * 0.5, images]),
      snapshot_steps=np.array([0, steps]), step_memory_bytes=3 * 2**20)


def test_cli_writes_target_reconstruction_strip_and_memory(tmp_path, capsys):
  import json  # pylint: disable=g-import-not-at-top

  from jaxleak.cli import main as cli  # pylint: disable=g-import-not-at-top
  inversion.register_attack("snapshot_test", _snapshot_attack)
  try:
    workdir = tmp_path / "run"
    assert cli.main([
        "attack", "--attack", "snapshot_test", "--model", "mlp",
        "--dataset", "digits", "--sampling-steps", "5", "--trainable", "up",
        "--lora-rank", "2", "--no-progress", "--workdir", str(workdir)]) == 0
    for name in ("target.png", "reconstruction.png", "finetune_strip.png",
                 "metrics.json", "report.md"):
      assert (workdir / name).stat().st_size > 0, name
    with open(workdir / "metrics.json") as f:
      summary = json.load(f)["summary"]
    assert summary["step_memory_mb"] == 3.0
    assert summary["peak_rss_mb"] > 10
    assert "lfw_faces" in (workdir / "report.md").read_text()
    # A flag the attack does not take is named as the CLI flag.
    assert cli.main(["attack", "--attack", "dlg", "--lora-rank", "2",
                     "--workdir", str(tmp_path)]) == 2
    assert "does not accept --lora-rank" in capsys.readouterr().err
    # A resolution the UNet cannot down-sample fails before data loads.
    assert cli.main(["attack", "--attack", "diffusion_finetune",
                     "--dataset", "no_such_dataset", "--resolution", "66",
                     "--prior", "random", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "argument 'resolution' (66)" in err and "factor 4" in err
  finally:
    del inversion.ATTACKS["snapshot_test"]


def test_lifted_grey_prior_starts_from_grey_noise(prior):
  spec, lifted = dft.lift_prior(prior.spec, prior.params, 16, 3)
  rgb = diffusion.Prior("grey_lifted", spec, lifted, prior.schedule,
                        info={"trained_channels": 1})
  x_T = np.asarray(dft.initial_noise(rgb, 2, jax.random.key(0)))
  assert x_T.shape == (2, 16, 16, 3)
  np.testing.assert_array_equal(x_T[..., 0], x_T[..., 2])
  assert 0.8 < x_T.std() < 1.2
  # A prior trained on these channels keeps independent channels.
  native = np.asarray(dft.initial_noise(prior, 1, jax.random.key(0)))
  assert native.shape == (1, 16, 16, 1)
  rgb_native = diffusion.Prior("rgb", spec, lifted, prior.schedule)
  x3 = np.asarray(dft.initial_noise(rgb_native, 1, jax.random.key(0)))
  assert np.abs(x3[..., 0] - x3[..., 1]).max() > 0.5
