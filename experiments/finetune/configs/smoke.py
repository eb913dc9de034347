"""A minutes-long smoke run of experiments/finetune/run.py (64 px, 1 target).

  python experiments/finetune/run.py \\
      --config experiments/finetune/configs/smoke.py --workdir /tmp/ft_smoke
"""

from jaxleak import launch


def get_config():
  c = launch.sibling_config(__file__, "acceptance")
  c.resolutions = (64,)
  c.targets = ("coffee",)
  c.finetune = {"steps": 10, "lr": 1e-3, "sampling_steps": 5,
                "trainable": "all", "snapshots": 3, "loop": "scan"}
  c.log_every = 2
  c.ig_budget_fractions = (1.0,)
  c.ig_calibration_steps = 5
  c.defence_resolution = 0
  return c
