"""As logreg.py with learning rate 1.0 (a twice larger step).

With it DeltaGrad diverges for some seeds and deletion ratios, which is why
logreg.py uses 0.5; kept to reproduce that observation.
"""

import importlib.util
import os

import ml_collections


def _base_config() -> ml_collections.ConfigDict:
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logreg.py")
  spec = importlib.util.spec_from_file_location("logreg_base_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config() -> ml_collections.ConfigDict:
  c = _base_config()
  c.name = "logreg_lr1"
  c.learning_rate = 1.0
  return c
