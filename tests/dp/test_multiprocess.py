"""A real 2-process run (jax.distributed, gloo CPU collectives): one DP step
and one Mini-Unlearning step equal the single-process results."""

import importlib.util
import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _load_worker():
  # tests/ is no package: load the worker script (run below as a process)
  # by its path, whatever the working directory and pytest's import mode.
  spec = importlib.util.spec_from_file_location(
      "_multiprocess_worker", os.path.join(HERE, "_multiprocess_worker.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


worker = _load_worker()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_and_draw_the_noise_once(tmp_path):
  port = _free_port()
  env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get(
      "PYTHONPATH", "")}
  env.pop("XLA_FLAGS", None)
  start = time.perf_counter()
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(HERE, "_multiprocess_worker.py"), str(i),
       "2", str(port), str(tmp_path)], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  wall = time.perf_counter() - start
  assert all(p.returncode == 0 for p in procs), "\n".join(outs)
  print(f"2-process DP step: {wall:.1f} s wall")
  # One writer: process 0 wrote the params and the ledger, process 1 did not.
  assert sorted(os.listdir(tmp_path)) == ["ledger.json", "noise0.npz",
                                          "noise1.npz", "params.npz",
                                          "unlearned.npz"]
  # Reference: the same step in this single process (one device, no mesh;
  # jax_threefry_partitionable is on by default since JAX 0.5).
  assert jax.config.jax_threefry_partitionable
  loss_fn, params, (x, y, mask), tx = worker.problem()
  want, _, noise = worker.step_fn(loss_fn, tx)(params, tx.init(params), x, y,
                                               mask)
  got = np.load(tmp_path / "params.npz")
  for path, leaf in jax.tree_util.tree_flatten_with_path(want)[0]:
    np.testing.assert_allclose(got[jax.tree_util.keystr(path)], leaf,
                               rtol=0, atol=2e-5)
  # Both processes hold the same noise, drawn once for the global sum: its
  # std is sigma * sensitivity (a per-process draw summed would be sqrt(2)x).
  n0, n1 = (np.load(tmp_path / f"noise{i}.npz")["noise"] for i in range(2))
  np.testing.assert_array_equal(n0, n1)
  ref = np.concatenate([np.ravel(a) for a in jax.tree.leaves(noise)])
  np.testing.assert_allclose(n0, ref, atol=1e-3)
  assert n0.size > 4000
  assert abs(np.std(n0) / (worker.SIGMA * worker.CLIP) - 1) < 0.05
  assert abs(np.mean(n0)) < 0.1 * worker.SIGMA * worker.CLIP
  # Mini-Unlearning with gradients sharded over both processes' 8 devices.
  got = np.load(tmp_path / "unlearned.npz")
  want = worker.unlearn(mesh=None)
  start = worker.unlearning_problem()[0].params
  for (path, leaf), (_, w0) in zip(jax.tree_util.tree_flatten_with_path(want)[0],
                                   jax.tree_util.tree_flatten_with_path(start)[0],
                                   strict=True):
    moved = float(np.max(np.abs(np.asarray(leaf) - np.asarray(w0))))
    assert moved > 1e-4  # The step did something.
    np.testing.assert_allclose(got[jax.tree_util.keystr(path)], leaf, rtol=0,
                               atol=1e-3 * moved)
