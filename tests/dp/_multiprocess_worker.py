"""One process of the 2-process DP test (tests/dp/test_multiprocess.py).

Usage: python _multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR

Each process has 4 virtual CPU devices; `jax.distributed` joins them into one
8-device mesh with CPU collectives through gloo. Each process builds only its
own half of the global batch (`jax.make_array_from_process_local_data`),
runs one jitted DP step of `dp.dp_sgd` on the fast path (loss and batch as
extra arguments), and process 0 alone writes the result and the ledger.
"""

import json
import os
import sys

import jax
import numpy as np
import optax

from jaxleak import dp
from jaxleak import models

SIGMA, CLIP, B = 4.0, 0.5, 16


def problem():
  """Model, global batch and optimiser, identical in every process."""
  apply_fn, params = models.create("mlp", 10, (8, 8, 1), jax.random.key(1),
                                   hidden=(64,))
  rng = np.random.default_rng(0)
  x = rng.random((B, 8, 8, 1), np.float32)
  x[3] = np.nan  # A broken example: skipped, in any process.
  y = rng.integers(0, 10, B).astype(np.int32)
  mask = np.arange(B) < B - 2  # Poisson padding.

  def loss_fn(p, batch):
    return models.cross_entropy_loss(apply_fn(p, batch[0]), batch[1])
  tx = dp.dp_sgd(1.0, CLIP, SIGMA, key=7, expected_batch_size=B)
  return loss_fn, params, (x, y, mask), tx


def step_fn(loss_fn, tx):
  @jax.jit
  def step(params, state, x, y, mask):
    updates, state = tx.update(None, state, params, loss_fn=loss_fn,
                               batch=(x, y), mask=mask)
    clipped = dp.private_grad(loss_fn, dp.clip(CLIP))(params, (x, y), mask).grad_sum
    # Noise actually added: update = -(sum + noise) / B with lr 1.
    noise = jax.tree.map(lambda u, s: -u * B - s, updates, clipped)
    return optax.apply_updates(params, updates), state, noise
  return step


def unlearning_problem():
  """A tiny trained softmax regression with its history, and a forget set."""
  from jaxleak import unlearning as ul  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = rng.random((64, 4, 4, 1), np.float32)
  y = rng.integers(0, 3, 64).astype(np.int32)
  apply_fn, params = models.create("mlp", 3, (4, 4, 1), jax.random.key(2),
                                   hidden=())
  recipe = ul.sgd_recipe(epochs=2, batch_size=16, learning_rate=0.5, l2=1e-2,
                         seed=0)
  history = ul.train_with_history(apply_fn, params, (x, y), recipe,
                                  snapshots=1, cache_steps=False)
  return ul.Model(apply_fn, history.final_params), history, np.arange(5), (x, y)


def unlearn(mesh):
  """One Mini-Unlearning step, gradients sharded over `mesh` (or none)."""
  from jaxleak import unlearning as ul  # pylint: disable=g-import-not-at-top
  model, history, forget, data = unlearning_problem()
  return ul.mini_unlearning(model, history, forget, data, steps=1, mesh=mesh,
                            chunk_size=4)


def main():
  pid, nproc, port, out = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                           sys.argv[4])
  # Before the first computation initialises the CPU backend.
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # Random bits independent of how the computation is partitioned, so the
  # replicated noise equals the single-process draw.
  jax.config.update("jax_threefry_partitionable", True)
  jax.distributed.initialize(coordinator_address=f"localhost:{port}",
                             num_processes=nproc, process_id=pid)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  loss_fn, params, (x, y, mask), tx = problem()
  per = B // nproc  # This process's rows only.
  local = slice(pid * per, (pid + 1) * per)
  batch = [jax.make_array_from_process_local_data(data, a[local], a.shape)
           for a in (x, y, mask)]
  params = jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(replicated, np.asarray(a)),
      params)
  state = jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(replicated, np.asarray(a))
      if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else
      jax.random.wrap_key_data(jax.make_array_from_process_local_data(
          replicated, np.asarray(jax.random.key_data(a)))),
      tx.init(params))
  new_params, state, noise = step_fn(loss_fn, tx)(params, state, *batch)
  flat = {jax.tree_util.keystr(k): np.asarray(v.addressable_data(0))
          for k, v in jax.tree_util.tree_flatten_with_path(new_params)[0]}
  noise_flat = np.concatenate([np.asarray(v.addressable_data(0)).ravel()
                               for v in jax.tree.leaves(noise)])
  np.savez(os.path.join(out, f"noise{pid}.npz"), noise=noise_flat)
  unlearned = unlearn(mesh)
  if jax.process_index() == 0:  # One writer for results and the ledger.
    np.savez(os.path.join(out, "params.npz"), **flat)
    np.savez(os.path.join(out, "unlearned.npz"),
             **{jax.tree_util.keystr(k): np.asarray(v) for k, v in
                jax.tree_util.tree_flatten_with_path(unlearned)[0]})
    ledger = dp.accounting.PrivacyLedger(delta=1e-5)
    ledger.record(SIGMA, B / 1000)
    with open(os.path.join(out, "ledger.json"), "w") as f:
      json.dump(ledger.to_dict(), f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
