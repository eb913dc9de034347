"""Per-sample weight rules: DP-SGD clipping, Auto-S/NSGD, DP-PSAC, DP-PSASC.

Every DP-SGD variant here shares one template (algorithms spec, A.0):

    x_{t+1} = x_t - lr / B * ( sum_i w(||g_i||) g_i + N(0, sigma^2 Delta^2 I) )

and differs only in the per-sample weight ``w``, which depends on a sample only
through the global L2 norm of its gradient. A rule is a callable
``rule(norms) -> weights`` carrying ``rule.sensitivity = Delta``.

Formal guarantee (checked by property tests over norms in [0, 1e6], zeros,
denormals and huge values included): for every norm ``x >= 0``,

    x * w(x) <= Delta,

so adding or removing one example changes ``sum_i w(||g_i||) g_i`` by at most
``Delta`` in L2 norm (add/remove adjacency), and Gaussian noise of standard
deviation ``noise_multiplier * Delta`` gives exactly DP-SGD's privacy with
that noise multiplier.

A non-finite norm (a NaN/Inf gradient) gets weight 0: the sample is dropped
from the sum rather than poisoning it, and callers count it.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp

from jaxleak._src import validate

__all__ = (
    "WeightRule",
    "clip",
    "normalize",
    "auto_s",
    "nsgd",
    "psac",
    "psasc",
    "custom",
    "safe_weights",
)


class WeightRule(Protocol):
  """A per-sample weight function with a declared L2 sensitivity."""
  name: str
  sensitivity: float

  def __call__(self, norms: jax.Array) -> jax.Array:
    ...


@dataclasses.dataclass(frozen=True)
class _Rule:
  name: str
  sensitivity: float
  fn: Callable[[jax.Array], jax.Array]
  params: tuple[tuple[str, float], ...] = ()

  def __call__(self, norms: jax.Array) -> jax.Array:
    return safe_weights(self.fn, norms)

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v:g}" for k, v in self.params)
    return f"{self.name}({args})"


def safe_weights(fn: Callable[[jax.Array], jax.Array], norms: jax.Array
                 ) -> jax.Array:
  """Applies `fn` to `norms`, mapping non-finite norms to weight 0.

  The input is sanitised *before* `fn` sees it (NaN -> 0), so `fn` never
  produces NaN that could leak into gradients through `jnp.where`.
  """
  norms = jnp.asarray(norms)
  finite = jnp.isfinite(norms)
  safe = jnp.where(finite, jnp.maximum(norms, 0.0), 0.0)
  return jnp.where(finite, fn(safe), 0.0).astype(norms.dtype)


def clip(l2_norm_clip: float) -> WeightRule:
  """DP-SGD clipping (Abadi et al. 2016): ``w(x) = min(1, C / x)``.

  Sensitivity ``C``: ``x * min(1, C/x) = min(x, C) <= C``. The division is
  guarded so that ``x = 0`` gives weight 1 (a zero gradient stays zero).
  """
  validate.check_positive(l2_norm_clip, "l2_norm_clip", fn="clip")
  c = float(l2_norm_clip)
  def fn(x):
    return jnp.minimum(1.0, c / jnp.maximum(x, c))  # = min(1, C/x), safe at 0
  return _Rule("clip", c, fn, (("l2_norm_clip", c),))


def normalize(l2_norm_clip: float = 1.0, gamma: float = 0.01, *,
              name: str = "normalize") -> WeightRule:
  """Automatic clipping / normalisation: ``w(x) = C / (x + gamma)``.

  Auto-S (Bu et al. 2023) with stability constant ``gamma`` (0.01 by default),
  equivalently NSGD with regulariser ``r = gamma``. Sensitivity ``C``:
  ``x * C / (x + gamma) < C`` for every ``x >= 0``.
  """
  validate.check_positive(l2_norm_clip, "l2_norm_clip", fn=name)
  validate.check_positive(gamma, "gamma", fn=name)
  c, g = float(l2_norm_clip), float(gamma)
  return _Rule(name, c, lambda x: c / (x + g), (("l2_norm_clip", c), ("gamma", g)))


def auto_s(l2_norm_clip: float = 1.0, gamma: float = 0.01) -> WeightRule:
  """Auto-S (Bu et al., NeurIPS 2023); see `normalize`."""
  return normalize(l2_norm_clip, gamma, name="auto_s")


def nsgd(l2_norm_clip: float = 1.0, r: float = 0.01) -> WeightRule:
  """Normalised SGD with regulariser ``r``; see `normalize`."""
  return normalize(l2_norm_clip, r, name="nsgd")


def psac(l2_norm_clip: float = 1.0, r: float = 0.1) -> WeightRule:
  """DP-PSAC (Xia et al., AAAI 2023): ``w(x) = C / (x + r / (x + r))``.

  Non-monotonic: ``w(0) = C`` (finite, unlike Auto-S's ``C / gamma``), rising to
  a peak at ``x = sqrt(r) - r`` for ``r < 1``, then decaying like ``C / x``.

  Sensitivity ``C``: ``x * w(x) = C x / (x + r/(x + r)) < C`` because
  ``r / (x + r) > 0``. The formula is the one public re-implementations use
  (spec A.4, third-party), not read in the paper itself.
  """
  validate.check_positive(l2_norm_clip, "l2_norm_clip", fn="psac")
  validate.check_positive(r, "r", fn="psac")
  c, rr = float(l2_norm_clip), float(r)
  return _Rule("psac", c, lambda x: c / (x + rr / (x + rr)),
               (("l2_norm_clip", c), ("r", rr)))


def psasc(l2_norm_clip: float = 1.0, r: float = 0.1, s: float = 1.0
          ) -> WeightRule:
  """DP-PSASC scaling, as reconstructed: ``w(x) = C / (s x + r / (x + r))``.

  **Reconstruction, not the paper's verified function.** Only the abstract of
  Huang et al. (arXiv 2411.03059) could be read; this is the generalised
  non-monotonic family ``s >= 1`` that a public JAX re-implementation citing
  the paper uses (spec A.5). ``s = 1`` coincides with `psac`. Swap in the
  paper's function with `custom` once it is available.

  Sensitivity ``C / s``: ``h(x) = x w(x) = C x / (s x + r/(x + r))`` has
  ``h'(x) ∝ r (2x + r) / (x + r)^2 > 0``, so ``h`` increases to its limit
  ``C / s`` and never reaches it.
  """
  validate.check_positive(l2_norm_clip, "l2_norm_clip", fn="psasc")
  validate.check_positive(r, "r", fn="psasc")
  validate.check_positive(s, "s", fn="psasc")
  if s < 1.0:
    raise ValueError(f"psasc: argument 's' must be >= 1 (got {s!r}); the "
                     "reconstructed family is only studied for s >= 1")
  c, rr, ss = float(l2_norm_clip), float(r), float(s)
  return _Rule("psasc", c / ss, lambda x: c / (ss * x + rr / (x + rr)),
               (("l2_norm_clip", c), ("r", rr), ("s", ss)))


def custom(fn: Callable[[jax.Array], jax.Array], sensitivity: float, *,
           name: str = "custom") -> WeightRule:
  """Wraps a user weight function with its declared sensitivity.

  The caller is responsible for ``sup_x x * fn(x) <= sensitivity``; use
  `jaxleak.dp.check_sensitivity` to test it on a grid of norms.
  """
  validate.check_positive(sensitivity, "sensitivity", fn="custom")
  if not callable(fn):
    raise TypeError(f"custom: argument 'fn' must be callable, got {fn!r}")
  return _Rule(name, float(sensitivity), fn)


RULES = {
    "clip": clip,
    "normalize": normalize,
    "auto_s": auto_s,
    "nsgd": nsgd,
    "psac": psac,
    "psasc": psasc,
}


def check_sensitivity(rule: WeightRule, norms: jax.Array | None = None, *,
                      rtol: float = 1e-6) -> float:
  """Returns ``max_x x * rule(x)`` over `norms`; raises if it exceeds the bound.

  The default grid spans 0, denormals and 1e-12 ... 1e6 logarithmically.
  """
  if norms is None:
    norms = jnp.concatenate([
        jnp.array([0.0, 1e-45, 1e-38, 1e-30]),
        jnp.logspace(-12, 6, 20001),
    ])
  norms = jnp.asarray(norms, jnp.float32)
  worst = float(jnp.max(norms * rule(norms)))
  if worst > rule.sensitivity * (1 + rtol):
    raise ValueError(
        f"{rule!r} violates its declared sensitivity {rule.sensitivity}: "
        f"max_x x*w(x) = {worst}")
  return worst
