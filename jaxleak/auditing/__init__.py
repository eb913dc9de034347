"""Empirical privacy auditing: canaries, scores and epsilon lower bounds.

Not imported by `jaxleak.dp` (auditing depends on the DP core, not the other
way round). `estimators` turns in/out canary scores into lower bounds on
epsilon (jax-privacy's `CanaryScoreAuditor`, plus a corrected GDP bound);
`gradient_canaries` audits the DP aggregation step white-box by simulation;
`input_canaries` audits whole training runs black-box with mislabelled
examples.
"""

from jaxleak.auditing import estimators
from jaxleak.auditing import gradient_canaries
from jaxleak.auditing import input_canaries
from jaxleak.auditing.estimators import attack_auroc
from jaxleak.auditing.estimators import epsilon_lower_bound
from jaxleak.auditing.estimators import METHODS

__all__ = (
    "METHODS",
    "attack_auroc",
    "epsilon_lower_bound",
    "estimators",
    "gradient_canaries",
    "input_canaries",
)
