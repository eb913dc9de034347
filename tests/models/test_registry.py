"""Registry, output shapes, parameter counts and input errors of jaxleak.models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import models
from jaxleak.models import architectures

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)


def _images(seed, shape):
  # NumPy, not jax.random: XLA:CPU takes seconds to compile a threefry draw of
  # a rank-4 shape.
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def test_available_lists_every_model():
  assert models.available() == sorted(models.MODELS)
  assert set(models.available()) == {
      "lenet", "convnet", "mlp", "cnn_mnist", "cnn_cifar", "resnet18", "vit",
      "text_transformer"}


def test_public_api_exports():
  for name in ("create", "available", "MODELS", "reinit", "param_count",
               "cross_entropy_loss", "soft_cross_entropy", "INIT_SCHEMES"):
    assert name in models.__all__
    assert hasattr(models, name)


# Shapes are checked with jax.eval_shape: it traces the whole model (so shape
# bugs surface) without paying for XLA compilation.
@pytest.mark.parametrize("name,kwargs", [
    ("lenet", {}),
    ("mlp", {}),
    ("cnn_mnist", {}),
    ("cnn_cifar", {}),
    ("convnet", {"width": 4}),
    ("resnet18", {"width": 4}),
])
@pytest.mark.parametrize("input_shape", [MNIST, CIFAR])
def test_output_shape(get_model, name, kwargs, input_shape):
  apply_fn, params = get_model(name, input_shape, num_classes=7, **kwargs)
  x = jax.ShapeDtypeStruct((5,) + input_shape, jnp.float32)
  out = jax.eval_shape(apply_fn, params, x)
  assert out.shape == (5, 7)
  assert out.dtype == jnp.float32
  assert apply_fn.name == name
  assert apply_fn.num_classes == 7
  assert apply_fn.input_shape == input_shape
  assert isinstance(apply_fn.module, architectures.nn.Module)


@pytest.mark.parametrize("name,kwargs,hws", [
    ("convnet", {"width": 4}, (8, 64, 128)),
    ("resnet18", {"width": 4}, (8, 64)),
    ("convnet", {"width": 4, "norm": "batch"}, (8,)),
    ("resnet18", {"width": 4, "norm": "batch"}, (8,)),
])
def test_resolution_agnostic_models(get_model, name, kwargs, hws):
  # Created for 32x32; global average pooling lets the same params serve any
  # resolution from 8x8 upwards.
  apply_fn, params = get_model(name, CIFAR, **kwargs)
  for hw in hws:
    x = jax.ShapeDtypeStruct((2, hw, hw, 3), jnp.float32)
    assert jax.eval_shape(apply_fn, params, x).shape == (2, 10)
  assert jax.eval_shape(apply_fn.eval, params, x).shape == (2, 10)


def test_forward_values_finite_and_jit_matches_eager(get_model, jit):
  apply_fn, params = get_model("lenet", CIFAR)
  x = _images(1, (3,) + CIFAR)
  eager = apply_fn(params, x)
  jitted = jit(apply_fn)(params, x)
  assert np.all(np.isfinite(eager))
  np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)


def test_apply_fn_is_hashable_and_usable_as_static_arg(get_model, jit):
  apply_fn, params = get_model("mlp", MNIST, hidden=(8,))
  other_fn, other_params = models.create("mlp", 10, MNIST, 1, hidden=(8,))
  traces = []

  def logits(f, p, x):
    traces.append(f)  # Runs only when jit traces.
    return f(p, x)

  jitted = jit(logits, static_argnums=0)
  x = _images(0, (2,) + MNIST)
  np.testing.assert_allclose(jitted(apply_fn, params, x), apply_fn(params, x),
                             rtol=1e-5, atol=1e-6)
  jitted(apply_fn, params, x)  # Same static function: a cache hit.
  np.testing.assert_allclose(jitted(other_fn, other_params, x),
                             other_fn(other_params, x), rtol=1e-5, atol=1e-6)
  assert traces == [apply_fn, other_fn]
  assert {apply_fn: 1}.get(other_fn) is None and "mlp" in repr(apply_fn)


def test_param_count_cnn_mnist_exact(get_model):
  # Conv 8*8*1*16+16 = 1040, Conv 4*4*16*32+32 = 8224, Dense 512*32+32 = 16416,
  # Dense 32*10+10 = 330.
  _, params = get_model("cnn_mnist", MNIST)
  assert models.param_count(params) == 26_010


def test_param_count_cnn_cifar_exact(get_model):
  # Convs 896 + 9248 + 18496 + 36928 + 73856 + 147584, Dense 2048*128+128 =
  # 262272, Dense 1290.
  _, params = get_model("cnn_cifar", CIFAR)
  assert models.param_count(params) == 550_570


def test_param_count_lenet_and_resnet18():
  # DLG's LeNet on CIFAR-100: 3 convs (912 + 3612 + 3612) + Dense 768*100+100.
  module = architectures.LeNet(num_classes=100)
  x = jnp.zeros((1,) + CIFAR)
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  assert models.param_count(shapes) == 85_036
  # The standard CIFAR ResNet-18 count (with BatchNorm affine parameters).
  for norm in ("batch", "group"):
    module = architectures.ResNet18(num_classes=10, norm=norm)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    assert models.param_count(shapes) == 11_173_962


def test_param_count_ignores_batch_stats(get_model):
  _, params = get_model("convnet", CIFAR, width=4, norm="batch")
  assert "batch_stats" in params
  n_params = sum(np.size(l) for l in jax.tree.leaves(params["params"]))
  assert models.param_count(params) == n_params
  assert models.param_count(params["params"]) == n_params


def test_group_norm_groups_divide_channels():
  for c in (4, 8, 16, 32, 48, 64, 96, 512):
    g = architectures.group_count(c)
    assert c % g == 0 and g <= 32
  assert architectures.group_count(64) == 32
  assert architectures.group_count(16) == 16


def test_unknown_model_names_argument_and_lists_choices():
  with pytest.raises(ValueError, match="'name'") as e:
    models.create("vgg", 10, CIFAR, jax.random.key(0))
  for choice in models.available():
    assert choice in str(e.value)


@pytest.mark.parametrize("kwargs,arg", [
    ({"num_classes": 0}, "num_classes"),
    ({"input_shape": (32, 32)}, "input_shape"),
    ({"input_shape": (32, 32, 0)}, "input_shape"),
    ({"init": "orthogonal"}, "init"),
    ({"norm": "layer"}, "norm"),
    ({"act": "swish"}, "act"),
    ({"width": 0}, "width"),
])
def test_create_errors_name_the_argument(kwargs, arg):
  call = dict(name="convnet", num_classes=10, input_shape=CIFAR,
              key=jax.random.key(0))
  call.update(kwargs)
  with pytest.raises(ValueError, match=f"'{arg}'"):
    models.create(**call)


def test_unexpected_model_kwarg_is_a_type_error():
  with pytest.raises(TypeError, match="'width'"):
    models.create("lenet", 10, CIFAR, jax.random.key(0), width=3)


def test_bad_input_errors_name_x(get_model):
  apply_fn, params = get_model("lenet", CIFAR)
  with pytest.raises(ValueError, match="'x'"):
    apply_fn(params, jnp.zeros(CIFAR))  # Missing batch axis.
  with pytest.raises(ValueError, match="'x'"):
    apply_fn(params, jnp.zeros((1, 32, 32, 1)))  # Wrong channel count.
  with pytest.raises(ValueError, match="'x'.*spatial"):
    apply_fn(params, jnp.zeros((1, 28, 28, 3)))  # Dense layer sized for 32x32.


# --------------------------------------------------------------------------
# BatchNorm semantics.


def test_bn_model_flags_and_layer_order(get_model):
  apply_fn, _ = get_model("convnet", CIFAR, width=4, norm="batch")
  assert apply_fn.has_batch_norm
  assert apply_fn.bn_layers == tuple((f"norm{i}",) for i in range(8))
  resnet_fn, resnet_params = get_model("resnet18", CIFAR, width=4, norm="batch")
  # stem + 8 blocks x 2 + 3 projection shortcuts.
  assert len(resnet_fn.bn_layers) == 20
  assert resnet_fn.bn_layers[0] == ("stem_norm",)
  assert len(resnet_fn.bn_running_stats(resnet_params)) == 20
  for name, kwargs in [("convnet", {"width": 4}), ("resnet18", {"width": 4})]:
    fn, p = get_model(name, CIFAR, **kwargs)
    assert not fn.has_batch_norm and "batch_stats" not in p


def test_batch_norm_semantics(get_model, jit):
  apply_fn, params = get_model("convnet", CIFAR, width=4, norm="batch")
  x = _images(3, (4,) + CIFAR)
  # Same batch with examples 1..3 replaced.
  other = x.copy()
  other[1:] = _images(4, (3,) + CIFAR)

  def run(params, x, other):
    # One compiled program for all modes keeps the test fast.
    return dict(
        with_stats=apply_fn.with_bn_stats(params, x),
        train=apply_fn(params, x),
        train_other=apply_fn(params, other),
        eval=apply_fn.eval(params, x),
        train_apply=apply_fn.train_apply(params, x),
    )

  before = jax.tree.map(np.array, params["batch_stats"])
  out = jit(run)(params, x, other)

  # with_bn_stats: one (mean, var) per BN layer; the first equals the batch
  # statistics of the first convolution's output.
  logits, stats = out["with_stats"]
  assert len(stats) == len(apply_fn.bn_layers) == 8
  conv0 = params["params"]["conv0"]
  h = jax.lax.conv_general_dilated(
      x, conv0["kernel"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST) + conv0["bias"]
  mean, var = stats[0]
  assert mean.shape == var.shape == (4,)
  np.testing.assert_allclose(mean, h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(var, h.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-6)
  for (m, v), c in zip(stats, (4, 8, 8, 16, 16, 16, 16, 16)):
    assert m.shape == v.shape == (c,) and np.all(v >= 0)
  np.testing.assert_allclose(logits, out["train"], rtol=1e-5, atol=1e-5)

  # Train mode normalises with the batch's statistics: different from eval
  # mode (running stats are (0, 1) at init), and example 0's logits depend on
  # the other examples of the batch.
  assert not np.allclose(out["train"], out["eval"], atol=1e-3)
  assert not np.allclose(out["train_other"][0], out["train"][0], atol=1e-4)

  # train_apply: same logits, running averages updated with momentum 0.9;
  # apply_fn itself never touches the params passed in.
  logits, new_params = out["train_apply"]
  np.testing.assert_allclose(logits, out["train"], rtol=1e-5, atol=1e-5)
  run_mean, run_var = apply_fn.bn_running_stats(new_params)[0]
  np.testing.assert_allclose(run_mean, 0.1 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(run_var, 0.9 + 0.1 * var, rtol=1e-3, atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, before, params["batch_stats"])
  init_mean, init_var = apply_fn.bn_running_stats(params)[0]
  np.testing.assert_array_equal(init_mean, 0.0)
  np.testing.assert_array_equal(init_var, 1.0)


def test_non_bn_model_has_no_stats(get_model):
  apply_fn, params = get_model("lenet", CIFAR)
  x = jax.ShapeDtypeStruct((2,) + CIFAR, jnp.float32)
  logits, stats = jax.eval_shape(apply_fn.with_bn_stats, params, x)
  assert stats == [] and logits.shape == (2, 10)
  assert apply_fn.bn_running_stats(params) == []


def test_cnn_mnist_applies_to_8x8_digits(get_model):
  # The VALID 4x4 conv falls back to SAME on tiny inputs: 8x8 -> 4x4 -> 3x3
  # -> conv1 (SAME, s2) 2x2 -> pool 1x1 -> 32 features.
  apply_fn, params = get_model("cnn_mnist", (8, 8, 1))
  x = jax.ShapeDtypeStruct((3, 8, 8, 1), jnp.float32)
  assert jax.eval_shape(apply_fn, params, x).shape == (3, 10)
  assert models.param_count(params) == 1040 + 8224 + (32 * 32 + 32) + 330
