"""Prior training: the loss goes down, data-parallel, exact resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import data
from jaxleak import diffusion

STEPS = 20


@pytest.fixture(scope="module")
def digits():
  ds = data.load("digits", "train", resolution=16)
  # Three classes, to match the tiny UNet's label space.
  keep = np.flatnonzero(ds.labels < 3)[:96]
  return ds.images[keep], ds.labels[keep]


def _train(tiny, digits, workdir, stop_after=None):
  images, labels = digits
  return diffusion.train_prior(
      tiny.apply_fn, tiny.params, tiny.schedule, images, labels, steps=STEPS,
      batch_size=16, learning_rate=2e-3, warmup_steps=2, cond_drop_prob=0.1,
      null_class=tiny.spec.null_class, seed=3, workdir=str(workdir),
      checkpoint_every=10, log_every=5, progress=False,
      devices=jax.devices()[:2], stop_after=stop_after)


@pytest.fixture(scope="module")
def full_run(tiny, digits, tmp_path_factory):
  return _train(tiny, digits, tmp_path_factory.mktemp("full"))


def _fixed_loss(tiny, params, digits):
  # Same timesteps and noise before and after: a deterministic comparison.
  images, labels = digits
  x0 = diffusion.to_model_space(jnp.asarray(images[:48]))
  return float(jax.jit(diffusion.diffusion_loss, static_argnums=0)(
      tiny.apply_fn, params, tiny.schedule, x0, jnp.asarray(labels[:48]),
      jax.random.key(11)))


def test_tiny_training_lowers_the_loss(tiny, digits, full_run):
  state = full_run.state
  assert int(state.step) == STEPS
  before = _fixed_loss(tiny, tiny.params, digits)
  after = _fixed_loss(tiny, jax.device_get(state.params), digits)
  assert after < 0.7 * before, (before, after)
  hist = full_run.history
  assert [h["step"] for h in hist] == [5, 10, 15, 20]
  assert hist[-1]["loss"] < hist[0]["loss"]
  assert all(np.isfinite(h["loss"]) for h in hist)


def test_training_is_data_parallel_with_replicated_state(full_run):
  leaf = jax.tree.leaves(full_run.state.params)[0]
  assert len(leaf.sharding.device_set) == 2
  assert leaf.sharding.is_fully_replicated


def test_ema_params_lag_the_params(tiny, full_run):
  state = full_run.state
  p0 = tiny.params["unet"]["conv_in"]["kernel"]
  p = state.params["unet"]["conv_in"]["kernel"]
  e = state.ema_params["unet"]["conv_in"]["kernel"]
  # The EMA lies between the initial and the current params.
  d_param = float(jnp.linalg.norm(p - p0))
  d_ema = float(jnp.linalg.norm(e - p0))
  assert 0 < d_ema < d_param


def test_resume_matches_uninterrupted_run(tiny, digits, full_run, tmp_path):
  first = _train(tiny, digits, tmp_path, stop_after=10)
  assert int(first.state.step) == 10 and first.resumed_from is None
  second = _train(tiny, digits, tmp_path)
  assert second.resumed_from == 10
  assert [h["step"] for h in second.history] == [5, 10, 15, 20]
  for a, b in zip(jax.tree.leaves(jax.device_get(second.state)),
                  jax.tree.leaves(jax.device_get(full_run.state))):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_array_equal(a, b)


def test_ema_decay_warms_up():
  decays = [float(diffusion.training.ema_decay_at(s, 0.999))
            for s in (0, 10, 100, 10_000)]
  assert decays[0] == pytest.approx(0.1)
  assert decays[1] < decays[2] < decays[3] == pytest.approx(0.999)


def test_train_prior_validates_arguments(tiny, digits):
  images, labels = digits
  with pytest.raises(ValueError, match="'batch_size'"):
    diffusion.train_prior(tiny.apply_fn, tiny.params, tiny.schedule, images,
                          labels, steps=1, batch_size=15,
                          devices=jax.devices()[:2], progress=False)
  with pytest.raises(ValueError, match="'labels'"):
    diffusion.train_prior(tiny.apply_fn, tiny.params, tiny.schedule, images,
                          labels[:5], steps=1, batch_size=16, progress=False)
  with pytest.raises(ValueError, match="'null_class'"):
    diffusion.make_train_step(tiny.apply_fn, tiny.schedule,
                              diffusion.make_optimizer(1e-3, 10),
                              cond_drop_prob=0.1)


def test_random_shift_translates_with_edge_padding():
  images = jnp.arange(2 * 6 * 6, dtype=jnp.float32).reshape(2, 6, 6, 1)
  assert diffusion.training.random_shift(images, jax.random.key(0), 0) is images
  seen = set()
  for seed in range(20):
    out = np.asarray(diffusion.training.random_shift(
        images, jax.random.key(seed), 2))
    assert out.shape == images.shape
    for b in range(2):
      # Find the (dy, dx) that explains the output: an edge-clamped shift.
      src = np.asarray(images[b, ..., 0])
      match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
               if np.array_equal(out[b, ..., 0], src[
                   np.clip(np.arange(6) - dy, 0, 5)][:, np.clip(
                       np.arange(6) - dx, 0, 5)])]
      assert len(match) == 1, (seed, b)
      seen.add(match[0])
  # Shifts are drawn per image and cover the range in both directions.
  assert {d for d, _ in seen} == {-2, -1, 0, 1, 2}
  assert {d for _, d in seen} == {-2, -1, 0, 1, 2}


def test_make_train_step_rejects_a_bad_shift(tiny):
  with pytest.raises(ValueError, match="'shift'"):
    diffusion.make_train_step(tiny.apply_fn, tiny.schedule,
                              diffusion.make_optimizer(1e-3, 10), shift=-1)
