"""Mixed per-example path (book-keeping + per-example offsets) equals vmap."""

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import dp
from jaxleak import models
from jaxleak.dp import layerwise

TINY = {"dim": 16, "depth": 1, "heads": 2, "mlp_dim": 16}


def _both(loss_fn, params, batch, mask, rule=None, **kw):
  rule = rule or dp.clip(0.05)
  run = lambda path: jax.jit(lambda p: dp.weighted_grad_sum(
      loss_fn, p, batch, rule, mask=mask, path=path, **kw))(params)
  return run("auto"), run("vmap")


@pytest.mark.parametrize("name,shape", [("vit", (8, 8, 3)),
                                        ("text_transformer", (10,))])
def test_mixed_equals_vmap_for_transformers_with_mask_and_nan(
    name, shape, assert_same_sums):
  apply_fn, params = models.create(name, 5, shape, jax.random.key(0), **TINY)
  b = 6
  if name == "vit":
    x = jax.random.uniform(jax.random.key(1), (b,) + shape)
    x = x.at[2].set(jnp.nan)  # A broken example: weight 0, never in the sum.
  else:
    # Repeated tokens exercise the token-equality Gram of the embedding.
    x = jax.random.randint(jax.random.key(1), (b,) + shape, 0, 256)
    x = x.at[:, :3].set(7).at[2, 5:].set(9)
  y = jnp.arange(b) % 5
  loss_fn = lambda p, bt: models.cross_entropy_loss(apply_fn(p, bt[0]), bt[1])
  plan = layerwise.plan(lambda p, bt: (loss_fn(p, bt), None), params, (x, y))
  kinds = {layer.kind for layer in plan.layers}
  assert kinds == ({"conv", "dense"} if name == "vit" else {"embed", "dense"})
  # Only the LayerNorms, positional embedding (and class token) go per example.
  assert all("norm" in u or "pos_embedding" in u or "cls_token" in u
             for u in plan.uncovered), plan.uncovered
  mask = jnp.arange(b) != 4
  got, ref = _both(loss_fn, params, (x, y), mask)
  if name == "vit":
    assert not np.isfinite(float(got.norms[2])) and float(got.weights[2]) == 0
  assert float(got.weights[4]) == 0 and float(jnp.min(got.norms[:2])) > 0.05
  assert_same_sums(got, ref)


def test_embedding_norm_without_per_example_table_matches_materialised():
  table = nn.Embed(7, 3)
  tokens = jnp.array([[1, 1, 2, 6], [0, 5, 5, 5]])
  params = table.init(jax.random.key(0), tokens)
  loss_fn = lambda p, bt: jnp.mean(jnp.sin(table.apply(p, bt[0])) * bt[1])
  weights = jax.random.normal(jax.random.key(1), (2, 4, 3))
  per_example = dp.per_example_grads(loss_fn, params, (tokens, weights))
  want = dp.global_norms(per_example)
  out = dp.weighted_grad_sum(loss_fn, params, (tokens, weights), dp.clip(1e9),
                             path="layerwise")
  np.testing.assert_allclose(out.norms, want, rtol=1e-6)
  np.testing.assert_allclose(out.grad_sum["params"]["embedding"],
                             per_example["params"]["embedding"].sum(0),
                             atol=1e-7)


class _NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(6, 8, rngs=rngs)
    self.norm = nnx.LayerNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.gelu(self.norm(self.dense(x))))


def test_nnx_model_through_split_and_merge(assert_same_sums):
  graphdef, state = nnx.split(_NnxMLP(nnx.Rngs(0)))

  def loss_fn(s, bt):
    return models.cross_entropy_loss(nnx.merge(graphdef, s)(bt[0]), bt[1])

  x = jax.random.normal(jax.random.key(2), (6, 6)).at[1].set(jnp.inf)
  y = jnp.arange(6) % 3
  mask = jnp.arange(6) < 5
  mixed = jax.jit(lambda s: dp.weighted_grad_sum(
      loss_fn, s, (x, y), dp.auto_s(1.0), mask=mask, path="mixed"))(state)
  _, ref = _both(loss_fn, state, (x, y), mask, rule=dp.auto_s(1.0))
  assert float(mixed.weights[1]) == 0 and float(mixed.weights[5]) == 0
  assert_same_sums(mixed, ref)
  # nnx.Linear has no linen taps: auto takes vmap, the optax path still works.
  tx = dp.dp_sgd(0.1, 1.0, 0.0, key=0, expected_batch_size=6)
  updates, _ = jax.jit(lambda s: tx.update(
      None, tx.init(s), s, loss_fn=loss_fn, batch=(x, y), mask=mask))(state)
  want = jax.jit(lambda s: dp.weighted_grad_sum(
      loss_fn, s, (x, y), dp.clip(1.0), mask=mask, path="vmap").grad_sum)(state)
  for got, ref in zip(jax.tree.leaves(updates), jax.tree.leaves(want)):
    np.testing.assert_allclose(got, -0.1 * ref / 6, atol=1e-7)


def test_cpu_loop_chunks_walk_transformer_batches_without_changing_results(
    monkeypatch, assert_same_sums):
  from jaxleak.dp import per_example  # pylint: disable=g-import-not-at-top
  apply_fn, params = models.create("text_transformer", 5, (10,),
                                   jax.random.key(0), **TINY)
  b = 128
  x = jax.random.randint(jax.random.key(1), (b, 10), 0, 256)
  y = jnp.arange(b) % 5
  loss_fn = lambda p, bt: models.cross_entropy_loss(apply_fn(p, bt[0]), bt[1])
  aux_loss = lambda p, bt: (loss_fn(p, bt), None)
  text_plan = layerwise.plan(aux_loss, params, (x, y))
  cnn_fn, cnn_params = models.create("cnn_mnist", 10, (8, 8, 1),
                                     jax.random.key(2))
  cnn_plan = layerwise.plan(
      lambda p, bt: (models.cross_entropy_loss(cnn_fn(p, bt[0]), bt[1]), None),
      cnn_params, (jnp.ones((2, 8, 8, 1)), jnp.zeros(2, jnp.int32)))
  big = per_example.MIN_PART_BYTES  # One example fills a part's bytes.
  chunk = per_example._cpu_loop_chunk
  # 4 parts of the least size the rules allow (16 examples, 1 MB).
  assert [chunk(s, big, text_plan) for s in (64, 96, 128, 256, 1024)] == [
      None, None, 64, 64, 64]
  assert chunk(1024, 2**14, text_plan) == 256  # 64 examples of 16 KB a part.
  # cnn_mnist's (folded) convolutions run as `layerwise.stride1_conv`; a
  # conv past the first layer left to Flax (here: an explicit precision)
  # keeps the unrolled parts (a loop body runs autodiff's input gradient of
  # a convolution 20x slower on XLA:CPU).
  assert all(layer.own_conv for layer in cnn_plan.layers if layer.kind == "conv")
  assert chunk(1024, big, cnn_plan) == 64

  class Convs(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (3, 3))(x)
      x = nn.Conv(4, (3, 3), precision=jax.lax.Precision.HIGHEST)(x)
      return nn.Dense(2)(x.reshape(x.shape[0], -1))
  convs = Convs()
  images = jnp.ones((2, 6, 6, 1))
  convs_plan = layerwise.plan(
      lambda p, bt: (jnp.mean(convs.apply(p, bt)), None),
      convs.init(jax.random.key(0), images), images)
  assert [layer.own_conv for layer in convs_plan.layers] == [True, False, False]
  assert chunk(1024, big, convs_plan) is None

  monkeypatch.setattr(per_example, "MIN_PART_BYTES", 0)  # Tiny examples.
  assert chunk(b, 1, text_plan) == 64
  mask = jnp.arange(b) % 9 != 4
  rule = dp.psac(0.05, 0.1)
  run = lambda path: jax.jit(lambda p: dp.weighted_grad_sum(
      loss_fn, p, (x, y), rule, mask=mask, path=path))(params)
  looped = run("auto")
  monkeypatch.setattr(per_example, "CPU_LOOP_PARTS", b)  # Unrolled parts.
  unrolled = run("auto")
  ref = run("vmap")
  assert_same_sums(looped, ref)
  assert_same_sums(unrolled, ref)
  np.testing.assert_allclose(looped.norms, unrolled.norms, rtol=1e-6)
