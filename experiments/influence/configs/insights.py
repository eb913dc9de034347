"""The three I²F insights (Zhang et al. 2023), each a small experiment with a figure.

(a) eigen: perturbing the gradient along the right singular vectors of J
    (eigenvectors of J^T J) with larger eigenvalues lambda of J J^T gives a
    smaller attack error: I²F predicts ||x_hat - x0|| = c / sqrt(lambda), i.e.
    MSE = c^2 / (d_x lambda), linear in 1 / lambda.
(b) classes: protection by the same Gaussian noise is unfair across images and
    classes (per-class distribution of the predicted RMSE).
(c) init: the initialisation matters (uniform vs normal vs Kaiming vs Xavier;
    I²F and the L2 attack's RMSE under the same noise).

  python experiments/influence/run_insights.py \\
      --config experiments/influence/configs/insights.py \\
      --workdir experiments/influence/results/insights

Sizes are reduced for 2 shared CPU cores (8 eigen-directions on one image, 5
images per class, 3 images per initialisation, 1000 L-BFGS steps).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.parts = ("eigen", "classes", "init")
  c.model = "lenet"
  c.dataset = "mnist_subset"
  c.split = "test"
  c.seed = 0
  c.attack = {"attack": "idlg", "steps": 1000, "optimizer": "lbfgs",
              "label_strategy": "known", "init": "randn"}
  # (a)
  c.eigen_images = 1
  c.eigen_directions = 8
  c.eigen_range = 1e-3  # smallest chosen lambda / lambda_max
  c.eigen_delta_norm = 1.0  # ||delta|| = c
  # (b)
  c.class_images_per_class = 5
  c.class_noise_var = 1e-3
  c.class_eps = (1.0, 1e-3)
  c.class_probes = 8
  # (c)
  c.inits = ("uniform", "normal", "kaiming", "xavier")
  c.init_images = 3
  c.init_noise_var = 1e-4
  c.init_eps = (1.0, 1e-3)
  return c
