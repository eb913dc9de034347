"""Inversion influence: how far a gradient-inversion attack's answer moves.

`jacobian` holds the matrix-free products with the input-parameter mixed
Jacobian ``J = d/dx d/dtheta L`` that I²F and the reconstruction-vulnerability
measure share.
"""

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
)
