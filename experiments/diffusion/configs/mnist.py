"""Prior quality: the shipped class-conditional `mnist` prior.

The recommended sampling (100 DDIM steps, eta 1, classifier-free guidance 8)
on 500 samples of sampling seed 1, which none of the setting comparisons saw
(`jaxleak/assets/priors/README.md`); the judge is trained with seed 0.

  python experiments/diffusion/evaluate_prior.py \\
      --config experiments/diffusion/configs/mnist.py \\
      --workdir experiments/diffusion/results/mnist_guidance8_eta1_steps100

Other sampler settings override the fields, e.g.
``--config.steps=50 --config.eta=0 --config.guidance_scale=3``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.prior = "mnist"          # a shipped name or a prior folder
  c.n = 500                  # samples to draw
  c.steps = 100              # DDIM steps
  c.eta = 1.0                # DDIM stochasticity (0 deterministic, 1 DDPM-like)
  c.guidance_scale = 8.0     # classifier-free guidance (conditional priors)
  c.seed = 0                 # judge classifier seed
  c.sample_seed = 1          # sampling seed; -1: the judge's seed
  return c
