"""Prior quality: the shipped unconditional `lfw_faces` prior.

64 samples with 50 deterministic DDIM steps, each compared (SSIM) with its
nearest training face, next to the same statistic for held-out real faces.

  python experiments/diffusion/evaluate_prior.py \\
      --config experiments/diffusion/configs/lfw_faces.py \\
      --workdir experiments/diffusion/results/lfw_faces
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.prior = "lfw_faces"      # a shipped name or a prior folder
  c.n = 64                   # samples to draw
  c.steps = 50               # DDIM steps
  c.eta = 0.0                # DDIM stochasticity (0 deterministic, 1 DDPM-like)
  c.guidance_scale = 1.0     # no guidance (unconditional prior)
  c.seed = 0                 # held for the record (no judge is trained)
  c.sample_seed = -1         # sampling seed; -1: `seed`
  return c
