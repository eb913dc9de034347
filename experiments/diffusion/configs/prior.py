"""Prior quality settings, one per shipped prior: ``prior.py:<name>``.

* ``mnist``: the class-conditional prior with the recommended sampling (50
  DDIM steps, eta 0, classifier-free guidance 3; for the 2500-step weights
  it was 100 steps, eta 1, guidance 8) on 500 samples of sampling seed 1,
  which none of the setting comparisons saw
  (`jaxleak/assets/priors/README.md`); the judge is trained with seed 0.
* ``lfw_faces``: the faces-only prior, 500 samples of sampling seed 1 with 50
  DDIM steps at eta 1, each compared (SSIM) with its nearest training face and
  scored by the HOG face / non-face judge (judge seed 0).

Used as ``evaluate_prior.py --config experiments/diffusion/configs/prior.py:<name>``
(commands in `evaluate_prior.py` and the README).
Other sampler settings override the fields, e.g.
``--config.steps=50 --config.eta=0 --config.guidance_scale=3``; any prior
folder with ``--config.prior=<folder>``.
"""

import ml_collections

# name: (samples, DDIM steps, eta, guidance scale, sampling seed)
_SETTINGS = {"mnist": (500, 50, 0.0, 3.0, 1),
             "lfw_faces": (500, 50, 1.0, 1.0, 1)}


def get_config(prior: str = "mnist") -> ml_collections.ConfigDict:
  if prior not in _SETTINGS:
    raise ValueError(f"prior.py:<name>: name must be one of "
                     f"{sorted(_SETTINGS)}, got {prior!r}")
  n, steps, eta, guidance, sample_seed = _SETTINGS[prior]
  c = ml_collections.ConfigDict()
  c.prior = prior            # a shipped name or a prior folder
  c.n = n                    # samples to draw
  c.steps = steps            # DDIM steps
  c.eta = eta                # DDIM stochasticity (0 deterministic, 1 DDPM-like)
  c.guidance_scale = guidance  # classifier-free guidance (conditional priors)
  c.seed = 0                 # judge classifier seed (conditional priors)
  c.sample_seed = sample_seed  # sampling seed; -1: `seed`
  return c
