"""Tunes the guidance strength on held-out images (not the reported ones).

For each victim, runs `diffusion_dps` over a grid of ζ and `diffusion_dsg`
over a grid of m_r on `images` held-out private images (simulate trials
10000+, i.e. different images and initialisations than the study's trials
0..N-1) at the given relative noise levels, and prints mean PSNR/SSIM per
setting; results are appended to ``<workdir>/tune.jsonl``.

  nice -n 10 python experiments/diffusion_attacks/tune.py \\
      --config experiments/diffusion_attacks/configs/tune.py \\
      --config.rates='(0.1, 0.2, 0.5)' \\
      --workdir experiments/diffusion_attacks/results/acceptance
"""

import json
import os
import time

import numpy as np

from jaxleak import launch
from jaxleak import report
from jaxleak.attacks import inversion

_CONFIG, _WORKDIR = launch.define_config_flags()


def main(argv):
  del argv
  cfg, workdir = _CONFIG.value, _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  with inversion.compiler_options(
      inversion.FAST_COMPILE if cfg.fast_compile else None):
    _tune(cfg, workdir)


def _tune(cfg, workdir):
  out = os.path.join(workdir, "tune.jsonl")
  for model in cfg.models:
    case = inversion.Case(model=model, dataset="mnist_subset", split="test",
                          resolution=32)
    grid = ([("diffusion_dps", {"zeta": z}) for z in cfg.zetas]
            + [("diffusion_dsg", {"guidance_rate": r}) for r in cfg.rates])
    for attack, kw in grid:
      for noise in cfg.noise:
        ps, ss = [], []
        for i in range(cfg.images):
          batch = inversion.simulate(
              case, seed=0, trial=10_000 + i,
              defence=inversion.GaussianNoise(std=noise, relative=True))
          t0 = time.perf_counter()
          r = inversion.run_attack(attack, batch.observation, key=i,
                                   prior=cfg.prior, steps=cfg.steps,
                                   ground_truth=batch.ground_truth, **kw)
          ps.append(r.metrics["psnr"])
          ss.append(r.metrics["ssim"])
        rec = {"model": model, "attack": attack, **kw, "noise": noise,
               "steps": cfg.steps, "psnr": float(np.mean(ps)),
               "ssim": float(np.mean(ss)), "psnrs": ps,
               "last_wall_s": time.perf_counter() - t0}
        print(json.dumps(rec), flush=True)
        report.append_jsonl(out, rec)


if __name__ == "__main__":
  launch.run(main)
