"""Inverting Gradients on the ConvNet, batches of 4 MNIST digits, 10 trials.

Target (Inverting Gradients, Geiping et al. 2020): report the mean PSNR
over 10 trials.

  python experiments/inversion/run_inversion.py \\
      --config experiments/inversion/configs/ig_batch4.py
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.study = "ig_batch4"
  c.title = "Inverting Gradients: batches of 4 MNIST digits, ConvNet, 10 trials"
  c.description = (
      "Case `ig_convnet_mnist_batch4` (4 random 28x28 mnist_subset digits, "
      "ConvNet width 32, ReLU, untrained; no defence; labels known). "
      "Inverting Gradients defaults except 300 iterations (CPU budget; "
      "the 4800-step default takes hours per trial on 2 cores); "
      "metrics after Hungarian matching of reconstructions to digits.")
  c.case = "ig_convnet_mnist_batch4"
  c.case_overrides = {}
  c.seed = 0
  c.trials = 10
  c.attacks = {"inverting_gradients": {"steps": 300}}
  c.defences = [("none", "none", {})]
  return c
