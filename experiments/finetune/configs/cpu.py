"""The acceptance study sized for 2 shared CPU cores (what was run).

As `acceptance.py` but 30 fine-tuning updates at 64 px and 20 at 128 px
(S = 10 DDIM steps), Tweedie estimates clipped in the chain, and Gaussian
noise 0 reusing the clean run.

  nice -n 19 python experiments/finetune/run.py \\
      --config experiments/finetune/configs/cpu.py \\
      --workdir experiments/finetune/results/cpu
"""

from jaxleak import launch


def get_config():
  c = launch.sibling_config(__file__, "acceptance")
  # clip_x0: the shipped lfw_faces prior's unclipped DDIM chain leaves only
  # 2-7% of pixels in range (even at its own 32 px); clipped, it samples a
  # grey face-like image. The same setting for the random-UNet ablation.
  c.finetune = {"steps": 30, "lr": 1e-3, "sampling_steps": 10,
                "trainable": "all", "snapshots": 6, "loop": "scan",
                "clip_x0": True}
  # (resolution, fine-tuning updates) overriding finetune.steps.
  c.finetune_steps = ((64, 30), (128, 20))
  return c
