"""Tunes the guidance strength on held-out images (not the reported ones).

For each victim in the study config's ``tune.models``, runs `diffusion_dps`
over ``tune.zetas`` and `diffusion_dsg` over ``tune.rates`` (m_r) on
``tune.images`` held-out private images (simulate trials 10000+, i.e.
different images and initialisations than the study's trials 0..N-1) at the
relative noise levels ``tune.noise``, with the study's prior, data, sampling
steps and compiler options, and prints mean PSNR/SSIM per setting; results
are appended to ``<workdir>/tune.jsonl``.

  nice -n 10 python experiments/diffusion_attacks/tune.py \\
      --config experiments/diffusion_attacks/configs/acceptance.py \\
      --config.tune.rates='(0.1, 0.2, 0.5)' \\
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
  cfg, workdir = _CONFIG.value, launch.study_workdir(_WORKDIR.value)
  with inversion.compiler_options(
      inversion.FAST_COMPILE if cfg.get("fast_compile") else None):
    _tune(cfg, workdir)


def _tune(cfg, workdir):
  out = os.path.join(workdir, "tune.jsonl")
  tune = cfg.tune
  for model in tune.models:
    case = inversion.Case(model=model, dataset=cfg.dataset, split=cfg.split,
                          resolution=cfg.resolution)
    grid = ([("diffusion_dps", {"zeta": z}) for z in tune.zetas]
            + [("diffusion_dsg", {"guidance_rate": r}) for r in tune.rates])
    for attack, kw in grid:
      for noise in tune.noise:
        ps, ss = [], []
        for i in range(tune.images):
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
