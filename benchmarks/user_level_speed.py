"""Speed and memory of `user_level_diffusion` (shipped MNIST prior, cnn_mnist).

Two measurements:

* **Seconds per user** at B = 30 and B = 100: one label user's batch
  gradient (an untrained 28x28 cnn_mnist victim: the step's arithmetic does
  not depend on the weights), the attack run twice with the same settings;
  the second run reuses the compiled step (steady state). The attack's
  program does not depend on B (the observed gradient has the parameters'
  shape), so B only changes the victim's one-off gradient.
* **Memory of one gradient** at window w = 1, 4 and the whole chain, for
  chain lengths S: XLA's buffer assignment of the compiled step
  (``compiled.memory_analysis()``: temporaries plus arguments and outputs),
  i.e. the peak the step needs, without running it. With a fixed window the
  program is the same for every S (only the timestep table grows), so the
  figure must not grow with S; back-propagating the whole chain grows
  linearly (one checkpointed UNet input per step).

  python benchmarks/user_level_speed.py                   # defaults below
  python benchmarks/user_level_speed.py --iterations 50 --chains 10 20 40

Results go to ``benchmarks/results/user_level_speed.json`` and print as
Markdown. Timings on a shared CPU are noisy: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from jaxleak import data  # pylint: disable=g-import-not-at-top
from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
from jaxleak import models  # pylint: disable=g-import-not-at-top
from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
from jaxleak.attacks.inversion import user_level  # pylint: disable=g-import-not-at-top


def _observation(batch_size: int, apply_fn, params):
  train = data.load("mnist_subset", "train")
  user = data.partition_users(train, 1, "label", batch_size=batch_size)[0]
  return inversion.observe(apply_fn, params, user.images, user.labels, key=0,
                           reveal_labels=False)


def seconds_per_user(args, apply_fn, params, prior) -> list[dict]:
  rows = []
  for b in args.batch_sizes:
    obs = _observation(b, apply_fn, params)
    times = []
    for run in range(2):
      t0 = time.perf_counter()
      inversion.user_level_diffusion(
          obs, key=run, prior=prior, steps=args.steps,
          iterations=args.iterations, window=args.window)
      times.append(time.perf_counter() - t0)
    rows.append({"batch_size": b, "iterations": args.iterations,
                 "steps": args.steps, "window": args.window,
                 "first_call_s": round(times[0], 2),
                 "steady_s_per_user": round(times[1], 2),
                 "s_per_iteration": round(times[1] / args.iterations, 4)})
    print(rows[-1], flush=True)
  return rows


def _tiny_prior():
  """A random-weight 16x16 UNet (one level): cheap to compile, for scaling."""
  return diffusion.random_prior(
      diffusion.UNetSpec(resolution=16, channels=1, block_out_channels=(32,)),
      name="tiny16")


def step_memory(args, apply_fn, params, prior) -> list[dict]:
  if args.memory_prior == "tiny":
    prior = _tiny_prior()
  obs = _observation(args.batch_sizes[0], apply_fn, params)
  rows = []
  for s in args.chains:
    ts = diffusion.ddim_timesteps(prior.schedule.num_timesteps, s)
    for window in sorted({1, 4, s}):
      if window > s:
        continue
      problem = user_level.RepresentativeProblem(
          unet_apply=prior.apply_fn, victim_apply=apply_fn,
          prior_shape=prior.image_shape, victim_shape=obs.image_shape,
          window=window)
      padded = np.concatenate([ts, -np.ones(window + 1, np.int32)])
      consts = {"prior": prior.params, "victim": obs.params,
                "target": obs.gradient, "schedule": prior.schedule,
                "timesteps": jnp.asarray(padded), "cond": None,
                "label": jnp.asarray(0), "tv": jnp.asarray(0.0)}
      z = jnp.zeros((1,) + prior.image_shape, jnp.float32)
      t0 = time.perf_counter()
      options = dict(inversion.FAST_COMPILE) if args.fast_compile else {}
      compiled = jax.jit(jax.value_and_grad(problem.loss),
                         compiler_options=options).lower(
                             z, consts, jnp.asarray(0)).compile()
      mem = compiled.memory_analysis()
      temp = int(mem.temp_size_in_bytes)
      total = temp + int(mem.argument_size_in_bytes) + int(
          mem.output_size_in_bytes)
      rows.append({"prior": prior.name, "chain_steps": s, "window": window,
                   "whole_chain": window == s,
                   "temp_MiB": round(temp / 2**20, 2),
                   "peak_MiB": round(total / 2**20, 2),
                   "compile_s": round(time.perf_counter() - t0, 1)})
      print(rows[-1], flush=True)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch-sizes", type=int, nargs="+", default=[30, 100])
  p.add_argument("--iterations", type=int, default=100)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--window", type=int, default=4)
  p.add_argument("--chains", type=int, nargs="+", default=[5, 10, 20])
  p.add_argument("--memory-prior", default="mnist", choices=("mnist", "tiny"),
                 help="prior for the memory rows: the shipped 32x32 one, or "
                      "a random 16x16 one-level UNet (compiles in seconds)")
  p.add_argument("--fast-compile", action="store_true",
                 help="memory analysis with XLA's fast-compile options")
  p.add_argument("--skip-timing", action="store_true")
  p.add_argument("--skip-memory", action="store_true")
  p.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      "user_level_speed.json"))
  args = p.parse_args()
  prior = diffusion.load_prior("mnist")
  apply_fn, params = models.create("cnn_mnist", 10, (28, 28, 1),
                                   jax.random.key(0))
  memory = [] if args.skip_memory else step_memory(args, apply_fn, params,
                                                   prior)
  timing = [] if args.skip_timing else seconds_per_user(
      args, apply_fn, params, prior)
  out = {"device": str(jax.devices()[0]), "load_average": os.getloadavg(),
         "cpu_count": os.cpu_count(), "timing": timing, "memory": memory,
         "args": vars(args)}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=2)
  print("\n| B | iterations | steady s/user | s/iteration | first call s |")
  print("|---|---|---|---|---|")
  for r in timing:
    print(f"| {r['batch_size']} | {r['iterations']} | "
          f"{r['steady_s_per_user']} | {r['s_per_iteration']} | "
          f"{r['first_call_s']} |")
  print("\n| prior | chain steps S | window | step peak MiB | temporaries MiB |")
  print("|---|---|---|---|---|")
  for r in memory:
    w = f"{r['window']} (whole chain)" if r["whole_chain"] else r["window"]
    print(f"| {r['prior']} | {r['chain_steps']} | {w} | {r['peak_MiB']} | "
          f"{r['temp_MiB']} |")
  print(f"\nwrote {args.out}; load average {out['load_average']}")


if __name__ == "__main__":
  main()
