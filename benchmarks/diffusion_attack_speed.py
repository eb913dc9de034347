"""Seconds per reconstruction of the diffusion-guided attacks, 32x32 and up.

Times `diffusion_dps`, `diffusion_dsg` (Python loop of a jitted step, and
one `lax.scan`) and `inverting_gradients` through the public registry on one
private image (32x32x1 with the shipped mnist prior), against the sigmoid
LeNet and the MLP victims:

  python benchmarks/diffusion_attack_speed.py                    # mnist prior
  python benchmarks/diffusion_attack_speed.py --prior /tmp/ptime/prior \\
      --steps 20 --models lenet --loops python scan

For each attack the first call (compilation included) and a second call with
a new key (steady state: compiled program reused) are timed; the steady-state
seconds per sampling / optimisation step give seconds per reconstruction at
the attacks' default lengths (100 sampling steps; Inverting Gradients at
4800 and at the budget-matched step count). Results go to
``benchmarks/results/diffusion_attack_speed.json`` and are printed as a
Markdown table. On a GPU machine pass ``--resolutions 64 128 256``: at a
resolution other than the prior's, the prior's UNet architecture is built at
that size with freshly initialised weights (timing only: the arithmetic per
step does not depend on the weights, so no large prior needs to ship), and
the victims are built at that size too. Rows say which weights were used.

  python benchmarks/diffusion_attack_speed.py --resolutions 64 128 256 \\
      --loops python --out benchmarks/results/diffusion_attack_speed_gpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
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


def _prior_at(prior: diffusion.Prior, res: int, seed: int = 0):
  """`prior` itself at its own resolution, else its architecture at `res`."""
  if res == prior.resolution:
    return prior, "trained"
  spec = dataclasses.replace(prior.spec, resolution=res)
  params = diffusion.init_unet(spec, jax.random.key(seed))
  return (diffusion.Prior(name=f"{prior.name}@{res}px", spec=spec,
                          params=params, schedule=prior.schedule,
                          class_names=prior.class_names),
          "untrained (timing only)")


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
  p.add_argument("--resolutions", nargs="+", type=int, default=None,
                 help="image sizes to time (default: the prior's own)")
  p.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      "diffusion_attack_speed.json"))
  args = p.parse_args(argv)

  base = diffusion.load_prior(args.prior)
  resolutions = args.resolutions or [base.resolution]
  factor = 2 ** (len(base.spec.block_out_channels) - 1)
  for r in resolutions:
    if not 16 <= r <= 512 or r % factor:
      p.error(f"argument --resolutions: {r} must be in [16, 512] and "
              f"divisible by {factor} (the prior's UNet downsamples "
              f"{factor}x)")
  rows = []
  for res in resolutions:
    prior, weights = _prior_at(base, res)
    ch = prior.channels
    for model in args.models:
      obs, x = _victim(model, res, ch)
      common = {"model": model, "resolution": res, "prior_weights": weights,
                "device": str(jax.devices()[0])}
      runs = [("diffusion_dps", loop, {"zeta": 1.0}) for loop in args.loops]
      runs += [("diffusion_dsg", loop, {}) for loop in args.loops]
      for attack, loop, kw in runs:
        def call(k, attack=attack, loop=loop, kw=kw):
          return inversion.run_attack(attack, obs, key=k, prior=prior,
                                      steps=args.steps, loop=loop,
                                      ground_truth=x, **kw)
        first, _ = _time(lambda: call(0))
        steady, _ = _time(lambda: call(1))
        per_step = steady / args.steps
        rows.append({**common, "attack": attack, "loop": loop,
                     "steps": args.steps, "first_call_s": first,
                     "steady_s": steady, "s_per_step": per_step,
                     "s_per_reconstruction_100_steps": 100 * per_step})
        print(json.dumps(rows[-1]), flush=True)
      def call_ig(k):
        return inversion.run_attack("inverting_gradients", obs, key=k,
                                    steps=args.ig_steps, ground_truth=x)
      first, _ = _time(lambda: call_ig(0))
      steady, _ = _time(lambda: call_ig(1))
      per_step = steady / args.ig_steps
      rows.append({**common, "attack": "inverting_gradients",
                   "loop": "python", "steps": args.ig_steps,
                   "first_call_s": first, "steady_s": steady,
                   "s_per_step": per_step,
                   "s_per_reconstruction_4800_steps": 4800 * per_step})
      print(json.dumps(rows[-1]), flush=True)

  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  record = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
            "prior": base.name, "prior_params": diffusion.param_count(
                base.params), "rows": rows,
            "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
  with open(args.out, "w") as f:
    json.dump(record, f, indent=1)
  print("\n| px | model | attack | loop | first call (s) | s/step | "
        "s/reconstruction |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    full = r.get("s_per_reconstruction_100_steps",
                 r.get("s_per_reconstruction_4800_steps"))
    n = 100 if "s_per_reconstruction_100_steps" in r else 4800
    print(f"| {r['resolution']} | {r['model']} | {r['attack']} | "
          f"{r['loop']} | {r['first_call_s']:.1f} | {r['s_per_step']:.3f} | "
          f"{full:.1f} ({n} steps) |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
