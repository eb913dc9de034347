"""Guidance-strength tuning for the diffusion attacks (`tune.py`).

DPS over a grid of zeta and DSG over a grid of guidance rates m_r, on
`images` held-out private images (simulate trials 10000+) per victim, at
each relative gradient-noise level.

  nice -n 19 python experiments/diffusion_attacks/tune.py \\
      --config experiments/diffusion_attacks/configs/tune.py \\
      --workdir experiments/diffusion_attacks/results/acceptance
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.prior = "mnist"
  c.models = ("lenet", "mlp")
  c.zetas = (0.3, 1.0, 3.0, 10.0)     # diffusion_dps
  c.rates = (0.2,)                    # diffusion_dsg guidance_rate
  c.noise = (0.0, 1e-2)               # relative gradient-noise std
  c.images = 3
  c.steps = 50
  # The study config compiles with fast_compile=True; tune under the same.
  c.fast_compile = True
  return c
