"""Layerwise per-example norms and weighted sums equal the vmap(grad) path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import dp
from jaxleak import models
from jaxleak._src import conv_geometry
from jaxleak.dp import layerwise


def _classifier_loss(apply_fn):
  def loss_fn(params, batch):
    logits = apply_fn(params, batch[0])
    return models.cross_entropy_loss(logits, batch[1]), logits
  return loss_fn


def _batch(shape, b=10, seed=0, nan_row=None):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.random((b,) + shape, np.float32))
  if nan_row is not None:
    x = x.at[nan_row].set(jnp.nan)
  return x, jnp.asarray(rng.integers(0, 10, b), jnp.int32)


@pytest.mark.parametrize("name,shape", [
    ("cnn_mnist", (28, 28, 1)), ("cnn_mnist", (8, 8, 1)),
    ("cnn_cifar", (16, 16, 3)), ("lenet", (32, 32, 3)), ("mlp", (8, 8, 1)),
])
def test_layerwise_equals_vmap_with_mask_nan_and_microbatches(name, shape):
  apply_fn, params = models.create(name, 10, shape, jax.random.key(1))
  loss_fn = _classifier_loss(apply_fn)
  batch = _batch(shape, nan_row=3)
  mask = jnp.arange(10) < 8
  rule = dp.psasc(1.0, 0.1, 2.0)
  plan = layerwise.plan(loss_fn, params, batch)
  assert plan.applicable, plan.uncovered
  if name == "cnn_cifar":  # both conv forms: kept gradients and recomputed sums
    assert [l.ghost for l in plan.layers if l.kind == "conv"] == [
        False, False, False, False, True, True]
  ref = jax.jit(lambda p: dp.weighted_grad_sum(
      loss_fn, p, batch, rule, mask=mask, path="vmap", has_aux=True))(params)
  got = jax.jit(lambda p: dp.weighted_grad_sum(
      loss_fn, p, batch, rule, mask=mask, path="layerwise", has_aux=True,
      microbatch_size=5))(params)
  # The NaN example is skipped, padding rows are zero, the rest is exact.
  assert not np.isfinite(float(got.norms[3])) and float(got.weights[3]) == 0
  assert np.all(np.asarray(got.weights[8:]) == 0)
  keep = np.array([i for i in range(10) if i != 3])
  np.testing.assert_allclose(got.norms[keep], ref.norms[keep], rtol=2e-5)
  np.testing.assert_allclose(got.losses[keep], ref.losses[keep], rtol=1e-5)
  np.testing.assert_allclose(got.aux[keep], ref.aux[keep], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got.aux[keep, 0], apply_fn(params, batch[0])[keep],
                             rtol=1e-4, atol=1e-5)
  for x, y in zip(jax.tree.leaves(got.grad_sum), jax.tree.leaves(ref.grad_sum)):
    assert bool(jnp.all(jnp.isfinite(x)))
    np.testing.assert_allclose(x, y, rtol=0, atol=2e-5 * float(jnp.max(jnp.abs(y))))


class _Geometries(nn.Module):
  """Strides, explicit asymmetric pads, VALID, and a Dense over positions."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Conv(5, (3, 2), strides=(2, 1), padding=((1, 2), (0, 1)),
                         name="c0")(x))
    x = jnp.tanh(nn.Conv(4, (2, 3), padding="VALID", use_bias=False,
                         name="c1")(x))
    x = jnp.tanh(nn.Conv(6, (3, 3), strides=2, padding="SAME", name="c2")(x))
    # Dense on each of the 12 positions: T > 1 rows per example. The cost
    # model materialises "expand" (K=6, O=32) and uses the Gram form for
    # "mix" (K=O=32); the head sees one row (T=1, rank-one ghost norm).
    x = jnp.tanh(nn.Dense(32, name="expand")(x))
    x = jnp.tanh(nn.Dense(32, name="mix")(x))
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(4, name="head")(x)


def test_conv_geometries_and_multi_row_dense_match_vmap(assert_same_sums):
  model = _Geometries()
  x = jax.random.uniform(jax.random.key(0), (6, 11, 9, 2))
  y = jnp.arange(6) % 4
  params = model.init(jax.random.key(1), x)
  plan = layerwise.plan(lambda p, b: (models.cross_entropy_loss(
      model.apply(p, b[0]), b[1]), None), params, (x, y))
  assert plan.applicable
  assert [l.kind for l in plan.layers] == ["conv"] * 3 + ["dense"] * 3
  assert [l.ghost for l in plan.layers[3:]] == [False, True, True]
  loss_fn = lambda p, b: models.cross_entropy_loss(model.apply(p, b[0]), b[1])
  rule = dp.clip(0.05)
  ref = dp.weighted_grad_sum(loss_fn, params, (x, y), rule, path="vmap")
  got = dp.weighted_grad_sum(loss_fn, params, (x, y), rule, path="layerwise")
  assert_same_sums(got, ref)
  assert float(jnp.min(got.weights)) < 1  # clipping active: weights matter


def test_gram_norm_of_convs_matches_vmap_with_pads_strides_and_nan(
    monkeypatch, assert_same_sums):
  """The Gram form on every conv: asymmetric pads, unfolded strides, an Inf
  row and a masked row."""
  _force_form(monkeypatch, "gram")
  model = _Geometries()
  x = jax.random.uniform(jax.random.key(2), (6, 11, 9, 2)).at[4].set(jnp.inf)
  y = jnp.arange(6) % 4
  params = model.init(jax.random.key(1), x)
  loss_fn = lambda p, b: models.cross_entropy_loss(model.apply(p, b[0]), b[1])
  plan = layerwise.plan(lambda p, b: (loss_fn(p, b), None), params, (x, y))
  assert [l.gram for l in plan.layers] == [True] * 3 + [False] * 3
  mask = jnp.arange(6) != 1
  rule = dp.clip(0.05)
  ref = dp.weighted_grad_sum(loss_fn, params, (x, y), rule, mask=mask,
                             path="vmap")
  got = dp.weighted_grad_sum(loss_fn, params, (x, y), rule, mask=mask,
                             path="layerwise")
  assert float(got.weights[4]) == 0 and float(got.weights[1]) == 0
  assert_same_sums(got, ref)


def test_cost_model_takes_the_gram_norm_for_resnet_late_stages():
  """resnet18 at 32 px: the 8x8 and 4x4 stages' 3x3 convs use the Gram norm
  (T·(K+O) <= K·O), the 32x32 and 16x16 ones the tap-wise form."""
  apply_fn, params = models.create("resnet18", 10, (32, 32, 3),
                                   jax.random.key(0))
  x, y = _batch((32, 32, 3), b=2)
  plan = layerwise.plan(lambda p, b: (models.cross_entropy_loss(
      apply_fn(p, b[0]), b[1]), None), params, (x, y))
  convs = [l for l in plan.layers if l.kind == "conv"
           and l.kernel_shape[:2] == (3, 3)]
  sides = {l.out_shape[1]: set() for l in convs}
  for l in convs:
    sides[l.out_shape[1]].add(l.gram)
  assert sides == {32: {False}, 16: {False}, 8: {True}, 4: {True}}
  assert all(l.ghost for l in convs if l.gram)


class _FoldedStrides(nn.Module):
  """Strided convs whose strides divide their kernels: run space-to-depth."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Conv(5, (4, 3), strides=(2, 3), padding=((2, 1), (1, 1)),
                         name="c0")(x))
    x = jnp.tanh(nn.Conv(3, (2, 2), strides=2, padding="VALID", name="c1")(x))
    return nn.Dense(4, name="head")(x.reshape(x.shape[0], -1))


def _force_form(monkeypatch, form):
  """Every layer in one form (the cost model would mix them)."""
  monkeypatch.setattr(layerwise, "_prefer_ghost",
                      lambda kind, kernel_shape, out_shape: form != "materialised")
  monkeypatch.setattr(layerwise, "_prefer_gram",
                      lambda kernel_shape, out_shape: form == "gram")


@pytest.mark.parametrize("form", ["materialised", "taps", "gram"])
def test_folded_strided_convs_match_vmap_in_every_form(form, monkeypatch,
                                                       assert_same_sums):
  model = _FoldedStrides()
  x = jax.random.uniform(jax.random.key(0), (6, 11, 9, 2))
  y = jnp.arange(6) % 4
  params = model.init(jax.random.key(1), x)
  _force_form(monkeypatch, form)
  plan = layerwise.plan(lambda p, b: (models.cross_entropy_loss(
      model.apply(p, b[0]), b[1]), None), params, (x, y))
  assert [l.folded_strides for l in plan.layers] == [(2, 3), (2, 2), None]
  assert plan.layers[0].geometry.kernel_hw == (2, 1)
  assert [l.ghost for l in plan.layers] == [form != "materialised"] * 3
  assert [l.gram for l in plan.layers] == [form == "gram"] * 2 + [False]
  loss_fn = lambda p, b: models.cross_entropy_loss(model.apply(p, b[0]), b[1])
  rule = dp.clip(0.05)
  ref = dp.weighted_grad_sum(loss_fn, params, (x, y), rule, path="vmap")
  got = dp.weighted_grad_sum(loss_fn, params, (x, y), rule, path="layerwise")
  assert_same_sums(got, ref)
  assert float(jnp.min(got.weights)) < 1


class _WithGroupNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3), name="conv")(x)
    x = nn.GroupNorm(num_groups=2, name="norm")(x)
    return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


class _SharedDense(nn.Module):
  @nn.compact
  def __call__(self, x):
    dense = nn.Dense(x.shape[-1], name="shared")
    return dense(jnp.tanh(dense(x)))


@pytest.mark.parametrize("module,leaf,reason", [
    (_WithGroupNorm(), "['params']['norm']['scale']",
     "not a Dense/Conv/Embed kernel or bias"),
    (_SharedDense(), "['params']['shared']['kernel']", "shared by several calls"),
])
def test_uncovered_parameters_are_named_and_auto_takes_mixed(
    module, leaf, reason, assert_same_sums):
  shape = (6, 6, 2) if isinstance(module, _WithGroupNorm) else (3,)
  x = jax.random.normal(jax.random.key(0), (4,) + shape)
  y = jnp.arange(4) % 3
  params = module.init(jax.random.key(1), x)
  loss_fn = lambda p, b: models.cross_entropy_loss(module.apply(p, b[0]), b[1])
  with pytest.raises(ValueError, match=r"path='layerwise'.*not covered") as err:
    dp.weighted_grad_sum(loss_fn, params, (x, y), dp.clip(1.0),
                         path="layerwise")
  assert f"{leaf} ({reason})" in str(err.value)
  auto = dp.weighted_grad_sum(loss_fn, params, (x, y), dp.clip(1.0))
  ref = dp.weighted_grad_sum(loss_fn, params, (x, y), dp.clip(1.0),
                             path="vmap")
  assert_same_sums(auto, ref, rtol=1e-6)


def test_plain_jax_loss_without_flax_layers_is_refused_by_layerwise():
  params = {"w": jnp.ones((3, 2))}
  loss_fn = lambda p, b: jnp.mean((b[0] @ p["w"] - b[1]) ** 2)
  batch = (jnp.ones((4, 3)), jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match=r"\['w'\] \(not a Dense/Conv"):
    dp.weighted_grad_sum(loss_fn, params, batch, dp.clip(1.0), path="layerwise")


def test_independent_parts_split_large_batches_without_changing_results(
    monkeypatch):
  from jaxleak.dp import per_example  # pylint: disable=g-import-not-at-top
  big = per_example.MIN_PART_BYTES  # One example fills a part's bytes.
  assert [per_example._independent_parts(b, big)
          for b in (10, 32, 64, 96, 128, 130, 63, 256, 512)] == [
              1, 2, 4, 4, 8, 2, 1, 16, 16]
  # Small examples (16 KB, cnn_mnist) need 64 to a part.
  assert [per_example._independent_parts(b, 2**14)
          for b in (64, 128, 256, 1024)] == [1, 2, 4, 16]
  # 8x8 digits are too small to split at B=128 by the rule; split them anyway.
  monkeypatch.setattr(per_example, "MIN_PART_BYTES", 0)
  apply_fn, params = models.create("cnn_mnist", 10, (8, 8, 1), jax.random.key(2))
  loss_fn = _classifier_loss(apply_fn)
  batch = _batch((8, 8, 1), b=128, nan_row=5)
  mask = jnp.arange(128) < 120
  rule = dp.psac(1.0, 0.1)
  run = lambda path: dp.weighted_grad_sum(loss_fn, params, batch, rule,
                                          mask=mask, path=path, has_aux=True)
  split = run("layerwise")
  monkeypatch.setattr(per_example, "CPU_INDEPENDENT_PARTS", 1)
  whole = run("layerwise")
  ref = run("vmap")
  for got in (split, whole):
    assert float(got.weights[5]) == 0 and np.all(np.asarray(got.weights[120:]) == 0)
    keep = np.arange(128) != 5
    np.testing.assert_allclose(got.norms[keep], ref.norms[keep], rtol=2e-5)
    np.testing.assert_allclose(got.aux[keep], ref.aux[keep], rtol=1e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(got.grad_sum), jax.tree.leaves(ref.grad_sum)):
      np.testing.assert_allclose(x, y, rtol=0, atol=2e-5 * float(jnp.max(jnp.abs(y))))


@pytest.mark.parametrize("strides,pads", [((1, 1), ((1, 1), (1, 1))),
                                          ((2, 1), ((0, 2), (1, 0)))])
def test_chunked_tap_products_equal_the_whole_batch_form(strides, pads):
  # The CPU walks the batch in chunks (37 = 9 chunks of 4 and a remainder of
  # 1 here); the GPU's whole-batch form must give the same numbers.
  geometry = conv_geometry.ConvGeometry((3, 3), strides, pads)
  a = jax.random.normal(jax.random.key(0), (37, 1, 40, 40, 24))
  out_hw = ((40 + sum(pads[0]) - 3) // strides[0] + 1,
            (40 + sum(pads[1]) - 3) // strides[1] + 1)
  g = jax.random.normal(jax.random.key(1), (37, 1) + out_hw + (8,))
  assert layerwise._tap_chunk(9 * out_hw[0] * out_hw[1] * 24 * 4) < 37
  for norms in (False, True):
    whole = layerwise._tap_products_whole_batch(a, g, geometry, out_hw, norms)
    chunked = layerwise._tap_products_chunked(a, g, geometry, out_hw, norms)
    assert whole.shape == ((37,) if norms else (37, 9, 24, 8))
    np.testing.assert_allclose(chunked, whole, rtol=2e-5,
                               atol=2e-5 * float(jnp.max(jnp.abs(whole))))


def test_tap_chunks_hold_about_four_megabytes():
  assert [layerwise._tap_chunk(b) for b in (
      9 * 1024 * 32 * 4, 9 * 256 * 64 * 4, 9 * 256 * 32 * 4, 9 * 1024 * 3 * 4,
      64 * 2**20, 1)] == [4, 8, 16, 32, 1, 32]


@pytest.mark.parametrize("pads", [((1, 1), (1, 1)), ((0, 2), (2, 0)),
                                  ((0, 0), (0, 0))])
def test_stride1_conv_equals_lax_conv_with_both_gradients(pads):
  x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 2, 3, 4))
  def lax_conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  own = lambda x, k: layerwise.stride1_conv(x, k, pads)
  np.testing.assert_allclose(own(x, kernel), lax_conv(x, kernel), rtol=1e-5,
                             atol=1e-5)
  cot = jax.random.normal(jax.random.key(2), lax_conv(x, kernel).shape)
  loss = lambda f: lambda x, k: jnp.sum(f(x, k) * cot)
  for got, want in zip(jax.grad(loss(own), (0, 1))(x, kernel),
                       jax.grad(loss(lax_conv), (0, 1))(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  # Under vmap over examples (as the layerwise path runs it).
  squared = lambda f: lambda x1, k: jnp.sum(f(x1[None], k) ** 2)
  np.testing.assert_allclose(
      jax.vmap(jax.grad(squared(own)), (0, None))(x, kernel),
      jax.vmap(jax.grad(squared(lax_conv)), (0, None))(x, kernel),
      rtol=1e-4, atol=1e-4)
