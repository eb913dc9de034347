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
import functools
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from jaxleak import diffusion
from jaxleak import models
from jaxleak.attacks import inversion

# pylint: enable=g-import-not-at-top,wrong-import-position


def _victim(name: str, res: int, channels: int, seed: int = 0):
  kw = {"hidden": (512, 512)} if name == "mlp" else {}
  apply_fn, params = models.create(name, 10, (res, res, channels),
                                   jax.random.key(seed), **kw)
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(1, res, res, channels)).astype(np.float32)
  obs = inversion.observe(apply_fn, params, x, np.array([3]), key=seed)
  return obs, x


def _prior_at(prior: diffusion.Prior, spec: diffusion.UNetSpec,
              seed: int = 0):
  """`prior` itself if `spec` is its own, else `spec` with fresh weights."""
  if spec == prior.spec:
    return prior, "trained"
  res = spec.resolution
  params = diffusion.init_unet(spec, jax.random.key(seed))
  return (diffusion.Prior(name=f"{prior.name}@{res}px", spec=spec,
                          params=params, schedule=prior.schedule,
                          class_names=prior.class_names),
          "untrained (timing only)")


def _time(fn):
  t0 = time.perf_counter()
  out = fn()
  return time.perf_counter() - t0, out


def _timed_row(call, steps: int, full_steps: int, **fields):
  """Times `call(key=...)` twice (compile + run, then steady) as a row."""
  first, _ = _time(lambda: call(key=0))
  steady, _ = _time(lambda: call(key=1))
  per_step = steady / steps
  row = {**fields, "steps": steps, "first_call_s": first, "steady_s": steady,
         "s_per_step": per_step,
         f"s_per_reconstruction_{full_steps}_steps": full_steps * per_step}
  print(json.dumps(row), flush=True)
  return row


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
  specs = []
  for res in args.resolutions or [base.resolution]:
    try:  # UNetSpec checks the size against the architecture
      specs.append(dataclasses.replace(base.spec, resolution=res))
    except ValueError as e:
      p.error(f"argument --resolutions: {e}")
  rows = []
  for spec in specs:
    prior, weights = _prior_at(base, spec)
    res = prior.resolution
    for model in args.models:
      obs, x = _victim(model, res, prior.channels)
      common = {"model": model, "resolution": res, "prior_weights": weights}
      runs = [("diffusion_dps", loop, {"zeta": 1.0}) for loop in args.loops]
      runs += [("diffusion_dsg", loop, {}) for loop in args.loops]
      for attack, loop, kw in runs:
        call = functools.partial(inversion.run_attack, attack, obs,
                                 prior=prior, steps=args.steps, loop=loop,
                                 ground_truth=x, **kw)
        rows.append(_timed_row(call, args.steps, 100, **common,
                               attack=attack, loop=loop))
      call_ig = functools.partial(inversion.run_attack, "inverting_gradients",
                                  obs, steps=args.ig_steps, ground_truth=x)
      rows.append(_timed_row(call_ig, args.ig_steps, 4800, **common,
                             attack="inverting_gradients", loop="python"))

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
