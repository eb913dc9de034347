"""I²F validation: prediction vs the error of real attacks on the same noisy gradient.

The validation study of I²F (Zhang et al. 2023): sigmoid LeNet (U(-0.5, 0.5) weights, a new
initialisation per image), 28x28 mnist_subset digits (test split, stratified
over classes), one image per gradient, labels known to the attacker. For each
image and each noise variance, one Gaussian perturbation delta ~ N(0, var I)
is added to the clean gradient; I²F predicts ||x_hat - x0|| from (x0, delta)
and the L2 gradient-matching attack (iDLG objective with the known label,
L-BFGS) and Inverting Gradients (cosine + TV, signed Adam, box) are run on
that same noisy gradient.

  python experiments/influence/run_validation.py \\
      --config experiments/influence/configs/validation.py \\
      --workdir experiments/influence/results/validation

Reduced size (what fits on 2 shared CPU cores): ``--config.n_images=10``.
Attack iterations are reduced from the papers' (L-BFGS 1000 instead of
breaching's 1200; IG 1000 Adam steps instead of 4800/24000).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.study = "validation"
  c.model = "lenet"
  c.init = "uniform"
  c.dataset = "mnist_subset"
  c.split = "test"
  c.n_images = 50
  c.noise_vars = (1e-5, 1e-4, 1e-3, 1e-2)
  c.seed = 0
  # The first is the library's default eps; I²F is reported at every value
  # (J J^T of this pixel-space LeNet has eigenvalues down to ~1e-4, so eps = 1
  # damps most directions; see report.md).
  c.eps_values = (1.0, 0.1, 0.01, 1e-3, 1e-4, 10.0)
  c.num_probes = 8  # Hutchinson probes for sqrt(E[I^2])
  c.attacks = {
      "l2": {"attack": "idlg", "steps": 1000, "optimizer": "lbfgs",
             "label_strategy": "known", "init": "randn"},
      "ig": {"attack": "inverting_gradients", "steps": 1000,
             "label_strategy": "known"},
  }
  return c
