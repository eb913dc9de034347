"""Device-sharded Mini-Unlearning equals the single-device result."""

from jax.flatten_util import ravel_pytree
import numpy as np

from jaxleak import sharding
from jaxleak import unlearning as ul


def test_eight_devices_match_one_device(model, trained, forget30, digits):
  _, history = trained
  train = digits[0]
  # Small chunks: 1007 retained examples become 8 x 2 x 64 with padding.
  kw = dict(steps=4, chunk_size=64)
  one = ul.mini_unlearning(model, history, forget30, train,
                           mesh=sharding.data_mesh(1), **kw)
  eight = ul.mini_unlearning(model, history, forget30, train,
                             mesh=sharding.data_mesh(8), **kw)
  a, b = (np.asarray(ravel_pytree(p)[0]) for p in (one, eight))
  moved = np.linalg.norm(a - np.asarray(ravel_pytree(model.params)[0]))
  assert moved > 0.1  # the comparison is not trivially about w*
  np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
