"""Differentially private training: weight rules, optax transforms, accounting.

This package is the auditable core: it imports nothing of jaxleak's training,
models, data, report, sharding or checkpoint modules, so the privacy
guarantee can be checked by reading `jaxleak/dp/` alone. The sharded,
checkpointed training driver built on it is `jaxleak.dp_training`.

Quick start (DP-PSASC chained like any optax optimiser; the transform takes
the loss and the batch and runs the layerwise/mixed per-example path)::

    import jax, optax
    from jaxleak import dp

    tx = dp.dp_psasc(learning_rate=0.5, noise_multiplier=1.1,
                     key=jax.random.key(0), expected_batch_size=256)
    state = tx.init(params)
    updates, state = tx.update(None, state, params, loss_fn=loss_fn,
                               batch=(images, labels), mask=mask)
    params = optax.apply_updates(params, updates)

``tx.update(dp.per_example_grads(loss_fn, params, batch), state, params)``
(optax.contrib's contract) also works, at the cost of materialised ``vmap``
gradients.
"""

from jaxleak.dp import accounting
from jaxleak.dp.aggregate import add_tree_noise
from jaxleak.dp.aggregate import dp_aggregate
from jaxleak.dp.aggregate import dp_auto_s
from jaxleak.dp.aggregate import dp_psac
from jaxleak.dp.aggregate import dp_psasc
from jaxleak.dp.aggregate import dp_sgd
from jaxleak.dp.aggregate import DPAggregateState
from jaxleak.dp.aggregate import gaussian_privatizer
from jaxleak.dp.aggregate import GaussianPrivatizerState
from jaxleak.dp.per_example import global_norms
from jaxleak.dp.per_example import per_example_grads
from jaxleak.dp.per_example import per_example_losses
from jaxleak.dp.per_example import per_example_norms
from jaxleak.dp.per_example import private_grad
from jaxleak.dp.per_example import weighted_grad_sum
from jaxleak.dp.per_example import weighted_sum
from jaxleak.dp.per_example import WeightedGradSum
from jaxleak.dp.weights import auto_s
from jaxleak.dp.weights import check_sensitivity
from jaxleak.dp.weights import clip
from jaxleak.dp.weights import custom
from jaxleak.dp.weights import normalize
from jaxleak.dp.weights import nsgd
from jaxleak.dp.weights import psac
from jaxleak.dp.weights import psasc
from jaxleak.dp.weights import RULES
from jaxleak.dp.weights import WeightRule

__all__ = (
    "accounting",
    "add_tree_noise",
    "auto_s",
    "check_sensitivity",
    "clip",
    "custom",
    "dp_aggregate",
    "dp_auto_s",
    "dp_psac",
    "dp_psasc",
    "dp_sgd",
    "DPAggregateState",
    "gaussian_privatizer",
    "GaussianPrivatizerState",
    "global_norms",
    "normalize",
    "nsgd",
    "per_example_grads",
    "per_example_losses",
    "per_example_norms",
    "private_grad",
    "psac",
    "psasc",
    "RULES",
    "weighted_grad_sum",
    "weighted_sum",
    "WeightedGradSum",
    "WeightRule",
)
