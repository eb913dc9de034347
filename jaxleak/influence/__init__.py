"""Inversion influence: how far a gradient-inversion attack's answer moves.

`jacobian` holds the matrix-free products with the input-parameter mixed
Jacobian ``J = d/dx d/dtheta L`` that I²F and the reconstruction-vulnerability
measure share; `i2f` holds I²F itself (CG solve of ``(J J^T + eps I) b =
J delta``), its lower bound, the spectrum of ``J J^T`` and the Gaussian-noise
expectation ``E[I^2]``.
"""

from jaxleak.influence.i2f import i2f
from jaxleak.influence.i2f import i2f_expectation
from jaxleak.influence.i2f import i2f_lower_bound
from jaxleak.influence.i2f import i2f_per_image
from jaxleak.influence.i2f import jacobian_spectrum
from jaxleak.influence.i2f import lanczos
from jaxleak.influence.i2f import power_iteration
from jaxleak.influence.i2f import SOLVERS
from jaxleak.influence.jacobian import classifier_loss
from jaxleak.influence.jacobian import frobenius_norm_sq_hutchinson
from jaxleak.influence.jacobian import gram_vp
from jaxleak.influence.jacobian import jacobian_tvp
from jaxleak.influence.jacobian import jacobian_vp
from jaxleak.influence.jacobian import LossFn

__all__ = (
    "LossFn",
    "classifier_loss",
    "jacobian_vp",
    "jacobian_tvp",
    "gram_vp",
    "frobenius_norm_sq_hutchinson",
    "SOLVERS",
    "i2f",
    "i2f_per_image",
    "i2f_lower_bound",
    "i2f_expectation",
    "jacobian_spectrum",
    "lanczos",
    "power_iteration",
)
