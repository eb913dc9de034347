"""The registered ViT and text transformer: shapes and argument checks."""

import jax
import jax.numpy as jnp
import pytest

from jaxleak import models

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
