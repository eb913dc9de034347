"""Acceptance study: diffusion_finetune vs Inverting Gradients, 64/128 px.

scikit-image sample images astronaut, coffee and chelsea, centre-cropped and
resized to 64 and 128 px RGB, one per victim, labels known; the victim is the
GroupNorm ConvNet (width 32), untrained, initialised per target. The
fine-tuning starts from the shipped 32 px `lfw_faces` UNet (lifted to RGB at
the victim's size) and, as the ablation, from a randomly initialised UNet of
the same architecture. Inverting Gradients gets the same steady-state
wall-clock budget (and a quarter of it, for a PSNR-vs-time curve). Defences
on coffee at 128 px: relative Gaussian noise and DP clipping (C = 1) plus
noise. Budgets are small to fit 2 CPU cores shared by 8 processes.

  nice -n 10 python experiments/finetune/run.py \\
      --config experiments/finetune/configs/acceptance.py \\
      --workdir experiments/finetune/results/acceptance
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.title = ("Gradient-guided diffusion fine-tuning vs Inverting Gradients "
             "(sample images, batch 1)")
  c.description = (
      "diffusion_finetune: Adam on all UNet weights, DDIM chain of "
      "`finetune.sampling_steps` steps from a fixed x_T, cosine gradient "
      "distance; starting priors as named in each column ('lfw_faces' = the "
      "shipped 32 px greyscale face prior lifted to RGB; 'random' = same "
      "architecture, random weights). Inverting Gradients: library defaults "
      "(cosine + TV 1e-4, signed Adam lr 0.1, step decay) with its steps set "
      "to match the fine-tuning's steady-state seconds (compilation excluded "
      "for both). Timings on 2 shared CPU cores under heavy load (see each "
      "record's load_average): compare ratios, not absolute seconds.")
  c.seed = 0
  c.model = "convnet"
  c.model_kwargs = {"width": 32, "norm": "group"}
  c.resolutions = (64, 128)
  c.targets = ("astronaut", "coffee", "chelsea")
  c.priors = ("lfw_faces", "random")
  # loop="scan": one UNet body in the program (XLA:CPU compiles the
  # unrolled 10-step chain many times slower).
  c.finetune = {"steps": 100, "lr": 1e-3, "sampling_steps": 10,
                "trainable": "all", "snapshots": 6, "loop": "scan"}
  c.log_every = 5
  c.ig_budget_fractions = (0.25, 1.0)
  c.ig_calibration_steps = 20
  c.defence_resolution = 128
  c.defence_target = "coffee"
  c.noise_levels = (0.0, 1e-3, 1e-2, 1e-1)
  c.dp_clip = 1.0
  c.dp_noise_multipliers = (1e-3, 1e-2)
  # XLA:CPU fast-compile options (inversion.FAST_COMPILE) for every attack.
  # Off: with the scan chain the default compile takes about as long (~4 min
  # at 64 px under load) and the fine-tuning step runs 15-20x faster (5.2 s
  # vs 80-100 s at 64 px, S = 10; experiments/finetune/probe_timing.py).
  # The options are XLA:CPU flags: keep them off on a GPU.
  c.fast_compile = False
  # Persistent XLA compilation cache: a resumed run does not recompile.
  c.compilation_cache_dir = "/tmp/jaxleak_finetune_xla_cache"
  return c
