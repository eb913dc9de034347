"""As logreg.py with learning rate 1.0 (a twice larger step).

With it DeltaGrad diverges for some seeds and deletion ratios, which is why
logreg.py uses 0.5; kept to reproduce that observation.
"""

import ml_collections

from jaxleak import launch


def get_config() -> ml_collections.ConfigDict:
  c = launch.sibling_config(__file__, "logreg")
  c.name = "logreg_lr1"
  c.learning_rate = 1.0
  return c
