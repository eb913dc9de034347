"""The acceptance study sized for 2 shared CPU cores (what was run).

As `acceptance.py` but: S = 5 DDIM steps, 50 fine-tuning updates at 64 px
and 30 at 128 px, XLA's default optimisation (the fast-compile options made
the 64 px step 15-20x slower: 80-100 s vs 5.2 s per step at S = 10, for about
the same compile time, ~4 min, with the `lax.scan` chain), and Gaussian
noise 0 reusing the clean run.

  nice -n 19 python experiments/finetune/run.py \\
      --config experiments/finetune/configs/cpu.py \\
      --workdir experiments/finetune/results/cpu
"""

from experiments.finetune.configs import acceptance


def get_config():
  c = acceptance.get_config()
  c.finetune = {"steps": 50, "lr": 1e-3, "sampling_steps": 5,
                "trainable": "all", "snapshots": 6, "loop": "scan"}
  # (resolution, fine-tuning updates) overriding finetune.steps.
  c.finetune_steps = ((64, 50), (128, 30))
  return c
