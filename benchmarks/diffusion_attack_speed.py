"""Seconds per reconstruction of the diffusion-guided attacks at 32x32 (CPU).

Times `diffusion_dps`, `diffusion_dsg` (Python loop of a jitted step, and
one `lax.scan`) and `inverting_gradients` through the public registry on one
32x32x1 private image, against the sigmoid LeNet and the MLP victims:

  python benchmarks/diffusion_attack_speed.py                    # mnist prior
  python benchmarks/diffusion_attack_speed.py --prior /tmp/ptime/prior \\
      --steps 20 --models lenet --loops python scan

For each attack the first call (compilation included) and a second call with
a new key (steady state: compiled program reused) are timed; the steady-state
seconds per sampling / optimisation step give seconds per reconstruction at
the attacks' default lengths (100 sampling steps; Inverting Gradients at
4800 and at the budget-matched step count). Results go to
``benchmarks/results/diffusion_attack_speed.json`` and are printed as a
Markdown table. On a GPU machine pass ``--resolutions 64 128 256`` with a
prior of that size (not shipped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxleak import diffusion  # noqa: E402
from jaxleak import models  # noqa: E402
from jaxleak.attacks import inversion  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position


def _victim(name: str, res: int, channels: int, seed: int = 0):
  kw = {"hidden": (512, 512)} if name == "mlp" else {}
  apply_fn, params = models.create(name, 10, (res, res, channels),
                                   jax.random.key(seed), **kw)
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(1, res, res, channels)).astype(np.float32)
  obs = inversion.observe(apply_fn, params, x, np.array([3]), key=seed)
  return obs, x


def _time(fn):
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--prior", default="mnist")
  p.add_argument("--models", nargs="+", default=["lenet", "mlp"])
  p.add_argument("--steps", type=int, default=25,
                 help="sampling steps per timed diffusion run")
  p.add_argument("--ig-steps", type=int, default=200,
                 help="Inverting Gradients steps per timed run")
  p.add_argument("--loops", nargs="+", default=["python", "scan"])
  p.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      "diffusion_attack_speed.json"))
  args = p.parse_args(argv)

  prior = diffusion.load_prior(args.prior)
  res, ch = prior.resolution, prior.channels
  rows = []
  for model in args.models:
    obs, x = _victim(model, res, ch)
    runs = [("diffusion_dps", loop, {"zeta": 1.0}) for loop in args.loops]
    runs += [("diffusion_dsg", loop, {}) for loop in args.loops]
    for attack, loop, kw in runs:
      call = lambda k, attack=attack, loop=loop, kw=kw: inversion.run_attack(
          attack, obs, key=k, prior=prior, steps=args.steps, loop=loop,
          ground_truth=x, **kw)
      first, _ = _time(lambda: call(0))
      steady, _ = _time(lambda: call(1))
      per_step = steady / args.steps
      rows.append({"model": model, "attack": attack, "loop": loop,
                   "resolution": res, "steps": args.steps,
                   "first_call_s": first, "steady_s": steady,
                   "s_per_step": per_step,
                   "s_per_reconstruction_100_steps": 100 * per_step})
      print(json.dumps(rows[-1]), flush=True)
    call = lambda k: inversion.run_attack(
        "inverting_gradients", obs, key=k, steps=args.ig_steps,
        ground_truth=x)
    first, _ = _time(lambda: call(0))
    steady, _ = _time(lambda: call(1))
    per_step = steady / args.ig_steps
    rows.append({"model": model, "attack": "inverting_gradients",
                 "loop": "python", "resolution": res,
                 "steps": args.ig_steps, "first_call_s": first,
                 "steady_s": steady, "s_per_step": per_step,
                 "s_per_reconstruction_4800_steps": 4800 * per_step})
    print(json.dumps(rows[-1]), flush=True)

  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  record = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
            "prior": prior.name, "prior_params": diffusion.param_count(
                prior.params), "rows": rows,
            "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
  with open(args.out, "w") as f:
    json.dump(record, f, indent=1)
  print("\n| model | attack | loop | first call (s) | s/step | "
        "s/reconstruction |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    full = r.get("s_per_reconstruction_100_steps",
                 r.get("s_per_reconstruction_4800_steps"))
    n = 100 if "s_per_reconstruction_100_steps" in r else 4800
    print(f"| {r['model']} | {r['attack']} | {r['loop']} | "
          f"{r['first_call_s']:.1f} | {r['s_per_step']:.3f} | "
          f"{full:.1f} ({n} steps) |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
