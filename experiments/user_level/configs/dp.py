"""DP table: attribute accuracy against the DP-SGD noise multiplier.

The set-up of `default.py` (same victim, judge and user pool); each user's
update is DP-SGD's: per-sample clipping to C = 1 and Gaussian noise of std
sigma * C on the sum, divided by B (`inversion.DPClip`, weight rule and
sensitivity from `jaxleak.dp`). B = 30 label users, labels hidden; the
conditional attack and the label-conditioned prior alone (`dp_methods`).

  nice -n 19 python experiments/user_level/run.py \\
      --config experiments/user_level/configs/dp.py \\
      --workdir experiments/user_level/results/dp
"""

import importlib.util
import os


def _load_default():
  # The sibling config file, loaded by path (config files are not a package).
  spec = importlib.util.spec_from_file_location(
      "user_level_default_config",
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


default = _load_default()


def get_config():
  c = default.get_config()
  c.batch_sizes = ()
  c.modes = ()
  c.dp_noise_multipliers = (0.0, 0.1, 0.5, 1.0, 2.0)
  return c
