"""Models for gradient-leakage research behind one functional interface.

``create(name, num_classes, input_shape, key)`` returns ``(apply_fn, params)``
where ``apply_fn(params, x) -> logits`` is pure (jit, vmap, grad-of-grad, jvp
and vjp all apply) and ``params`` is the full Flax variables dict.

Example::

  apply_fn, params = jaxleak.models.create("lenet", 10, (32, 32, 3), key)
  loss = lambda p, x, y: cross_entropy_loss(apply_fn(p, x), y)
  per_example = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(
      params, x[:, None], y[:, None])
"""

from jaxleak.models.architectures import ACTIVATIONS
from jaxleak.models.initializers import INIT_SCHEMES
from jaxleak.models.initializers import param_count
from jaxleak.models.initializers import reinit
from jaxleak.models.losses import cross_entropy_loss
from jaxleak.models.losses import soft_cross_entropy
from jaxleak.models.registry import available
from jaxleak.models.registry import create
from jaxleak.models.registry import ModelFn
from jaxleak.models.registry import MODELS
from jaxleak.models.registry import ModelSpec

__all__ = (
    "ACTIVATIONS",
    "INIT_SCHEMES",
    "MODELS",
    "ModelFn",
    "ModelSpec",
    "available",
    "create",
    "cross_entropy_loss",
    "param_count",
    "reinit",
    "soft_cross_entropy",
)
