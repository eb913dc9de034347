"""DP table: attribute accuracy against the DP-SGD noise multiplier.

The set-up of `default.py` (same victim, judge and user pool); each user's
update is DP-SGD's: per-sample clipping to C = 1 and Gaussian noise of std
sigma * C on the sum, divided by B (`inversion.DPClip`, weight rule and
sensitivity from `jaxleak.dp`). B = 30 label users, labels hidden; the
conditional attack and the label-conditioned prior alone (`dp_methods`).

  nice -n 19 python experiments/user_level/run.py \\
      --config experiments/user_level/configs/dp.py \\
      --workdir experiments/user_level/results/prior6500_it10_dp
"""

from jaxleak import launch


def get_config():
  c = launch.sibling_config(__file__, "default")
  c.batch_sizes = ()
  c.modes = ()
  c.dp_noise_multipliers = (0.0, 0.1, 0.5, 1.0, 2.0)
  return c
