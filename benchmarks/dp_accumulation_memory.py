"""Peak memory of a logical DP batch built by gradient accumulation.

Compares, each in its own subprocess (so peak RSS is that run's own):

  * ``physical``: DP steps of ``dp.dp_psasc`` at the physical batch size
    (default 256; as many calls as the accumulated run makes), called as in
    the README (``tx.update(None, state, params,
    loss_fn=..., batch=...)`` under ``jax.jit``);
  * ``accumulated``: one logical step of `--logical` examples (default
    16384) as ``logical / physical`` calls of the same jitted update with
    ``accumulation_steps`` set; each micro-batch is drawn on the host as a
    data loader would, Poisson-padded with a mask;
  * ``single`` (with ``--single``): the logical batch in one call.

Peak memory is the process's resident high-water mark over the timed calls
(VmHWM, restarted after compilation and after handing the compiler's freed
heap back), and, for reference, over the whole process (compilation
included: the accumulating program is larger, so compiling it costs more).

Usage:
  python benchmarks/dp_accumulation_memory.py                 # cnn_mnist
  python benchmarks/dp_accumulation_memory.py --single        # + one big call
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(mode: str, model: str, physical: int, logical: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from jaxleak import dp  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak._src import host_memory  # pylint: disable=g-import-not-at-top

  shape = (28, 28, 1) if model == "cnn_mnist" else (32, 32, 3)
  apply_fn, params = models.create(model, 10, shape, jax.random.key(0))

  def loss_fn(p, b):
    return models.cross_entropy_loss(apply_fn(p, b[0]), b[1])

  # The same number of calls in both modes, so that the high-water marks
  # cover equally long runs (the allocator's heap settles over many calls).
  calls = 1 if mode == "single" else logical // physical
  size = logical if mode == "single" else physical
  tx = dp.dp_psasc(0.1, noise_multiplier=1.0, key=1,
                   expected_batch_size=logical if mode != "physical" else physical,
                   accumulation_steps=calls if mode == "accumulated" else 1)

  @jax.jit
  def update(p, s, x, y, mask):
    u, s = tx.update(None, s, p, loss_fn=loss_fn, batch=(x, y), mask=mask)
    return optax.apply_updates(p, u), s

  rng = np.random.default_rng(0)

  def micro_batch():
    x = rng.random((size,) + shape, np.float32)
    y = rng.integers(0, 10, size).astype(np.int32)
    return x, y, rng.random(size) < 0.95  # Poisson padding rows masked out.

  state = (params, tx.init(params))
  for _ in range(2):  # Compile; the second call sees committed arrays.
    state = update(*state, *micro_batch())
  jax.block_until_ready(state)
  # Steady state: hand the compiler's freed heap back, then restart the
  # kernel's high-water mark (VmHWM) so it covers the timed calls only.
  host_memory.release_freed_heap()
  # Read before the restart, which also resets what getrusage reports.
  compile_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  start = time.perf_counter()
  for _ in range(calls):
    state = update(*state, *micro_batch())
  jax.block_until_ready(state)
  return {"mode": mode, "calls": calls, "seconds": time.perf_counter() - start,
          "peak_rss_mb": _vm_hwm_mb(),
          "peak_rss_with_compile_mb": max(compile_peak, _vm_hwm_mb())}


def _vm_hwm_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) / 1024
  raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="cnn_mnist", choices=("cnn_mnist", "cnn_cifar"))
  ap.add_argument("--physical", type=int, default=256)
  ap.add_argument("--logical", type=int, default=16384)
  ap.add_argument("--single", action="store_true",
                  help="also run the logical batch as one call")
  ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.logical % args.physical:
    raise SystemExit("dp_accumulation_memory: error: --physical must divide "
                     "--logical")
  if args.worker:
    print(json.dumps(run(args.worker, args.model, args.physical, args.logical)))
    return
  env = dict(os.environ,
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("XLA_FLAGS", None)
  rows = []
  for mode in ("physical", "accumulated") + (("single",) if args.single else ()):
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", mode, "--model",
         args.model, "--physical", str(args.physical), "--logical",
         str(args.logical)], check=False, capture_output=True, text=True,
        env=env)
    if out.returncode:
      raise SystemExit(out.stderr[-2000:])
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.model} {mode:12s} {rows[-1]['calls']:4d} call(s) "
          f"{rows[-1]['seconds']:7.2f} s  peak {rows[-1]['peak_rss_mb']:7.0f} MB "
          f"(with compilation {rows[-1]['peak_rss_with_compile_mb']:.0f} MB)",
          flush=True)
  for key in ("peak_rss_mb", "peak_rss_with_compile_mb"):
    ratio = rows[1][key] / rows[0][key]
    print(f"{key}: logical {args.logical} by accumulation / one physical "
          f"{args.physical} step: {ratio:.3f}")


if __name__ == "__main__":
  main()
