"""Tunes the guidance strength on held-out images (not the reported ones).

For each victim, runs `diffusion_dps` over a grid of ζ and `diffusion_dsg`
over a grid of m_r on `--images` held-out private images (simulate trials
10000+, i.e. different images and initialisations than the study's trials
0..N-1) at the given relative noise levels, and prints mean PSNR/SSIM per
setting; results are appended to ``<workdir>/tune.jsonl``.

  nice -n 10 python experiments/diffusion_attacks/tune.py --prior mnist \\
      --models lenet mlp --zetas 0.3 1 3 10 --rates 0.1 0.2 0.5 \\
      --workdir experiments/diffusion_attacks/results/acceptance
"""

import argparse
import json
import os
import time

import numpy as np

from jaxleak import report
from jaxleak.attacks import inversion


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--prior", default="mnist")
  p.add_argument("--models", nargs="+", default=["lenet", "mlp"])
  p.add_argument("--zetas", nargs="*", type=float, default=[0.3, 1, 3, 10])
  p.add_argument("--rates", nargs="*", type=float, default=[0.2])
  p.add_argument("--noise", nargs="+", type=float, default=[0.0, 1e-2])
  p.add_argument("--images", type=int, default=3)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--workdir", required=True)
  p.add_argument("--no-fast-compile", action="store_true",
                 help="XLA's default (slower-compiling) options")
  args = p.parse_args()
  os.makedirs(args.workdir, exist_ok=True)
  # The study config compiles with fast_compile=True; tune under the same.
  with inversion.compiler_options(
      None if args.no_fast_compile else inversion.FAST_COMPILE):
    _tune(args)


def _tune(args):
  out = os.path.join(args.workdir, "tune.jsonl")
  for model in args.models:
    case = inversion.Case(model=model, dataset="mnist_subset", split="test",
                          resolution=32)
    grid = ([("diffusion_dps", {"zeta": z}) for z in args.zetas]
            + [("diffusion_dsg", {"guidance_rate": r}) for r in args.rates])
    for attack, kw in grid:
      for noise in args.noise:
        ps, ss = [], []
        for i in range(args.images):
          batch = inversion.simulate(
              case, seed=0, trial=10_000 + i,
              defence=inversion.GaussianNoise(std=noise, relative=True))
          t0 = time.perf_counter()
          r = inversion.run_attack(attack, batch.observation, key=i,
                                   prior=args.prior, steps=args.steps,
                                   ground_truth=batch.ground_truth, **kw)
          ps.append(r.metrics["psnr"])
          ss.append(r.metrics["ssim"])
        rec = {"model": model, "attack": attack, **kw, "noise": noise,
               "steps": args.steps, "psnr": float(np.mean(ps)),
               "ssim": float(np.mean(ss)), "psnrs": ps,
               "last_wall_s": time.perf_counter() - t0}
        print(json.dumps(rec), flush=True)
        report.append_jsonl(out, rec)


if __name__ == "__main__":
  main()
