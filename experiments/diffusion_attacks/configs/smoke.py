"""Smoke test of the launcher: LeNet only, 3 sampling steps, one image, two
noise levels (a few minutes on CPU, mostly compilation).

  python experiments/diffusion_attacks/run.py \\
      --config experiments/diffusion_attacks/configs/smoke.py \\
      --config.prior=/tmp/ptime/prior --workdir /tmp/dg_smoke
"""

from jaxleak import launch


def get_config():
  c = launch.sibling_config(__file__, "acceptance")
  c.study = "smoke"
  c.trials = 1
  c.models = {"lenet": {"model": "lenet", "init": "default"}}
  c.noise_levels = [0.0, 1e-2]
  c.attacks = {
      "diffusion_dps": {"steps": 3, "zeta": 1.0},
      "diffusion_dsg": {"steps": 3},
      "inverting_gradients": {"steps": "matched"},
  }
  c.calibration_ig_steps = 5
  c.rv.num_candidates = 2
  c.rv.num_probes = 4
  return c
