"""Inverting Gradients on the ConvNet, one 32x32 sample_images crop.

Target (Inverting Gradients, Geiping et al. 2020): report PSNR and SSIM.
Three trials = three different images (indices in results.jsonl), each with
its own ConvNet initialisation; no defence; labels known (the attacker of
Geiping et al.).

  python experiments/inversion/run_inversion.py \\
      --config experiments/inversion/configs/ig_single.py
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.study = "ig_single"
  c.title = "Inverting Gradients: one 32x32 sample_images crop, ConvNet"
  c.description = (
      "Case `ig_convnet_sample_images` (scikit-image sample photographs, "
      "centre-cropped and resized to 32x32x3; jaxleak ConvNet, width 32, "
      "ReLU, untrained LeCun-normal initialisation; batch 1; no defence; "
      "labels known). Inverting Gradients with the library defaults: cosine "
      "distance + TV, Adam (lr 0.1, pixel units) on sign(∇), box [0, 1], "
      "step decay at 3/8, 5/8, 7/8, 4800 iterations, 1 restart. One row per "
      "image.")
  c.case = "ig_convnet_sample_images"
  c.case_overrides = {}
  c.seed = 0
  c.trials = 3
  c.attacks = {"inverting_gradients": {}}
  c.defences = [("none", "none", {})]
  return c
