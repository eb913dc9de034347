"""Empirical privacy auditing: canaries, scores and epsilon lower bounds.

Not imported by `jaxleak.dp` (auditing depends on the DP core, not the other
way round). `estimators` turns in/out canary scores into lower bounds on
epsilon (jax-privacy's `CanaryScoreAuditor`, plus a corrected GDP bound);
`gradient_canaries` audits the DP aggregation step white-box by simulation;
`input_canaries` audits whole training runs black-box with mislabelled
examples.
"""

from jaxleak.auditing import estimators, gradient_canaries, input_canaries
from jaxleak.auditing.estimators import METHODS, attack_auroc, epsilon_lower_bound

__all__ = (
    "METHODS",
    "attack_auroc",
    "epsilon_lower_bound",
    "estimators",
    "gradient_canaries",
    "input_canaries",
)
