"""Defence table: attack PSNR versus Gaussian noise and DP clipping.

Target of this study: PSNR versus Gaussian noise std in {0, 1e-4, 1e-3, 1e-2,
1e-1} and versus DP clipping; the attack degrades as noise grows.

  python experiments/inversion/run_inversion.py \\
      --config experiments/inversion/configs/defences.py
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.study = "defences"
  c.title = "Defences: PSNR vs Gaussian noise and DP clipping (LeNet, MNIST)"
  c.description = (
      "Case `dlg_lenet_mnist` (one 28x28 digit, sigmoid LeNet, U(-0.5, 0.5) "
      "weights; labels known). The clean gradient has L2 norm ~15-27 and RMS "
      "~0.14-0.23 per coordinate (13,426 coordinates). Gaussian rows add "
      "N(0, std^2) to every coordinate; DP rows clip the per-sample gradient "
      "to norm C and add N(0, (sigma C)^2) (batch 1). iDLG (L2 distance, "
      "L-BFGS, 1200 iterations) and Inverting Gradients (cosine + TV, 2000 "
      "iterations); mean ± std over 5 trials.")
  c.case = "dlg_lenet_mnist"
  c.case_overrides = {}
  c.seed = 0
  c.trials = 5
  c.attacks = {"idlg": {"steps": 1200, "label_strategy": "known"},
               "inverting_gradients": {"steps": 2000}}
  c.defences = [
      ("none", "none", {}),
      ("gauss_1e-4", "gaussian", {"std": 1e-4}),
      ("gauss_1e-3", "gaussian", {"std": 1e-3}),
      ("gauss_1e-2", "gaussian", {"std": 1e-2}),
      ("gauss_1e-1", "gaussian", {"std": 1e-1}),
      ("dp_C10_s0", "dp_clip", {"l2_norm_clip": 10.0, "noise_multiplier": 0.0}),
      ("dp_C1_s0", "dp_clip", {"l2_norm_clip": 1.0, "noise_multiplier": 0.0}),
      ("dp_C1_s1e-3", "dp_clip", {"l2_norm_clip": 1.0,
                                  "noise_multiplier": 1e-3}),
      ("dp_C1_s1e-2", "dp_clip", {"l2_norm_clip": 1.0,
                                  "noise_multiplier": 1e-2}),
      ("dp_C1_s1e-1", "dp_clip", {"l2_norm_clip": 1.0,
                                  "noise_multiplier": 1e-1}),
      ("dp_C1_s1", "dp_clip", {"l2_norm_clip": 1.0, "noise_multiplier": 1.0}),
  ]
  return c
