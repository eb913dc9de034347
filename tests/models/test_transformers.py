"""The registered ViT and text transformer: shapes and argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import models
from jaxleak.models import transformers

TINY = {"dim": 8, "depth": 1, "heads": 2, "mlp_dim": 8}


def test_vit_and_text_transformer_give_logits_and_check_inputs():
  vit, params = models.create("vit", 4, (8, 8, 3), jax.random.key(0), **TINY)
  assert jax.jit(vit)(params, jnp.ones((2, 8, 8, 3))).shape == (2, 4)
  # Patches of 4: 4 tokens plus the class token carry positional embeddings.
  assert params["params"]["pos_embedding"].shape == (1, 5, 8)
  text, tparams = models.create("text_transformer", 3, (6,), jax.random.key(1),
                                vocab_size=11, **TINY)
  logits = jax.jit(text)(tparams, jnp.arange(12).reshape(2, 6) % 11)
  assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))
  assert tparams["params"]["token_embed"]["embedding"].shape == (11, 8)
  with pytest.raises(ValueError, match=r"argument 'x' must be int token ids"):
    jax.eval_shape(text, tparams, jnp.ones((2, 6)))
  with pytest.raises(ValueError, match=r"argument 'x' must be int token ids"):
    jax.eval_shape(text, tparams, jnp.ones((2, 7), jnp.int32))


@pytest.mark.parametrize("name,shape,kwargs,match", [
    ("vit", (8, 8, 3), {"dim": 10, "heads": 4}, "'dim'=10 must be divisible"),
    ("vit", (8, 8, 3), {"depth": 0}, "'depth' must be a positive int"),
    ("text_transformer", (8, 8, 1), {}, "'input_shape' must be"),
    ("text_transformer", (6,), {"vocab_size": 0}, "'vocab_size'"),
])
def test_bad_transformer_arguments_are_named(name, shape, kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.create(name, 3, shape, jax.random.key(0), **kwargs)


def test_attention_equals_softmax_attention_with_its_gradients():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 3, 4)) * 4.0
  def textbook(q, k, v):
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / 2.0  # sqrt(d), d=4
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, -1), v)
  np.testing.assert_allclose(transformers.attention(q, k, v),
                             textbook(q, k, v), rtol=1e-5, atol=1e-6)
  cot = jax.random.normal(jax.random.key(1), q.shape)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * cot)
  for got, want in zip(jax.grad(loss(transformers.attention), (0, 1, 2))(q, k, v),
                       jax.grad(loss(textbook), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Large logits: the max shift keeps exp finite.
  assert bool(jnp.all(jnp.isfinite(transformers.attention(q * 100, k, v))))
