"""Prior save/load in both formats, errors, and the shipped priors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import diffusion


@pytest.fixture(scope="module")
def prior(tiny):
  return diffusion.Prior(name="tiny", spec=tiny.spec, params=tiny.params,
                         schedule=diffusion.cosine_schedule(50),
                         class_names=("a", "b", "c"), info={"steps": 3})


@pytest.fixture(scope="module")
def probe(tiny, fast_jit):
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  t, y = jnp.array([3, 40]), jnp.array([0, 2])
  eps = fast_jit(tiny.apply_fn)(tiny.params, x, t, y)
  return x, t, y, eps, fast_jit


def _assert_same_prior(got, want, probe):
  assert got.name == want.name and got.spec == want.spec
  assert got.class_names == want.class_names and got.info == want.info
  np.testing.assert_array_equal(got.schedule.betas, want.schedule.betas)
  np.testing.assert_array_equal(got.schedule.alpha_bars,
                                want.schedule.alpha_bars)
  for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
    np.testing.assert_array_equal(a, b)
  x, t, y, eps, fast_jit = probe
  np.testing.assert_array_equal(
      fast_jit(got.apply_fn)(got.params, x, t, y), eps)


@pytest.mark.parametrize("fmt", diffusion.FORMATS)
def test_save_load_round_trip(prior, probe, tmp_path, fmt):
  path = diffusion.save_prior(prior, tmp_path / fmt, format=fmt)
  files = set(os.listdir(path))
  assert diffusion.prior.PRIOR_FILE in files
  if fmt == "diffusers":
    assert {"config.json", "diffusion_flax_model.msgpack"} <= files
  else:
    assert "checkpoint" in files
  _assert_same_prior(diffusion.load_prior(path), prior, probe)


def test_diffusers_folder_is_readable_by_diffusers(prior, tmp_path):
  from diffusers import FlaxUNet2DConditionModel  # pylint: disable=g-import-not-at-top
  path = diffusion.save_prior(prior, tmp_path / "d", format="diffusers")
  model, params = FlaxUNet2DConditionModel.from_pretrained(
      path, local_files_only=True)
  assert model.config.sample_size == 16
  assert model.config.block_out_channels == [32, 32]
  n = sum(np.size(x) for x in jax.tree.leaves(params))
  assert n == diffusion.param_count(prior.params["unet"])


def test_foreign_diffusers_folder_loads_as_unconditional(prior, tmp_path):
  path = str(tmp_path / "foreign")
  diffusion.save_unet_diffusers(prior.spec, prior.params["unet"], path)
  got = diffusion.load_prior(path)
  assert got.name == "foreign" and not got.conditional
  assert got.spec.block_out_channels == (32, 32)
  assert got.schedule.num_timesteps == 1000


def test_float16_storage_loads_as_float32(prior, tmp_path):
  path = diffusion.save_prior(prior, tmp_path / "h", dtype=np.float16)
  got = diffusion.load_prior(path)
  leaf = got.params["unet"]["conv_in"]["kernel"]
  assert leaf.dtype == jnp.float32
  want = prior.params["unet"]["conv_in"]["kernel"]
  np.testing.assert_allclose(leaf, want, atol=1e-3)
  assert float(jnp.abs(leaf - want).max()) > 0  # really was rounded


def test_unknown_name_lists_available_priors():
  with pytest.raises(FileNotFoundError) as info:
    diffusion.load_prior("celeba_hq_256")
  msg = str(info.value)
  assert "'name_or_path'" in msg
  for name in diffusion.available_priors():
    assert repr(name) in msg
  assert "mnist_subset" in diffusion.available_priors()
  assert "lfw_faces" in diffusion.available_priors()


def test_corrupt_folders_raise_clear_errors(prior, tmp_path):
  with pytest.raises(diffusion.PriorError, match="is not a prior"):
    diffusion.load_prior(tmp_path)  # empty folder
  path = diffusion.save_prior(prior, tmp_path / "c", format="diffusers")
  weights = os.path.join(path, "diffusion_flax_model.msgpack")
  with open(weights, "rb") as f:
    data = f.read()
  with open(weights, "wb") as f:
    f.write(data[: len(data) // 2])
  with pytest.raises(diffusion.PriorError, match="cannot read"):
    diffusion.load_prior(path)
  with open(weights, "wb") as f:
    f.write(data)
  record_path = os.path.join(path, diffusion.prior.PRIOR_FILE)
  with open(record_path) as f:
    record = json.load(f)
  record["spec"]["block_out_channels"] = [32, 64]  # params no longer fit
  with open(record_path, "w") as f:
    json.dump(record, f)
  with pytest.raises(diffusion.PriorError, match="shape"):
    diffusion.load_prior(path)
  with open(record_path, "w") as f:
    f.write("{not json")
  with pytest.raises(diffusion.PriorError, match="unreadable"):
    diffusion.load_prior(path)


def test_shipped_mnist_prior_samples():
  prior = diffusion.load_prior("mnist")
  assert prior.name == "mnist_subset" and prior.conditional
  assert prior.image_shape == (32, 32, 1) and prior.num_classes == 10
  assert prior.info["steps"] > 0 and "train-prior" in prior.info["command"]
  images = diffusion.generate(prior, jax.random.key(0), 4,
                              labels=[0, 1, 2, 3], num_steps=10)
  assert images.shape == (4, 32, 32, 1) and images.dtype == np.float32
  assert np.all(np.isfinite(images))
  assert images.min() >= 0.0 and images.max() <= 1.0
  # MNIST-like: mostly dark background with some bright strokes.
  assert 0.02 < images.mean() < 0.5 and images.max() > 0.8


def test_generate_validates_arguments(prior):
  with pytest.raises(ValueError, match="'labels'"):
    diffusion.generate(prior, jax.random.key(0), 2, labels=[0, 7])
  with pytest.raises(ValueError, match="'num_steps'"):
    diffusion.generate(prior, jax.random.key(0), 2, num_steps=51)


def test_random_prior_is_seeded_numpy_normal_weights():
  spec = diffusion.UNetSpec(resolution=16, channels=1, block_out_channels=(32,))
  got = diffusion.random_prior(spec, name="r", seed=3, std=0.1)
  assert got.name == "r" and got.spec == spec and got.resolution == 16
  np.testing.assert_array_equal(got.schedule.betas,
                                diffusion.linear_schedule(1000).betas)
  shapes = jax.eval_shape(lambda k: diffusion.init_unet(spec, k),
                          jax.random.key(0))
  assert jax.tree.structure(got.params) == jax.tree.structure(shapes)
  rng = np.random.default_rng(3)  # leaf after leaf, in tree order
  for leaf, s in zip(jax.tree.leaves(got.params), jax.tree.leaves(shapes)):
    assert leaf.shape == s.shape and leaf.dtype == s.dtype
    np.testing.assert_array_equal(
        leaf, (0.1 * rng.standard_normal(s.shape)).astype(s.dtype))
  again = diffusion.random_prior(spec, seed=3, std=0.1)
  for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)
