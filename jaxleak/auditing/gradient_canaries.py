"""White-box gradient canaries: audit a DP aggregation step by simulation.

The strongest audit of DP-SGD (Nasr et al. 2023, arXiv 2302.07956): the
adversary controls one example's *gradient*. Canary c contributes the
per-example gradient ``M u_c`` (a fixed unit direction ``u_c``, norm ``M`` far
above the clip bound, so every weight rule scales it to nearly its full
sensitivity ``Delta``) and is inserted with probability 1/2. The mechanism
under audit is jaxleak's own: the per-step release is computed by
`jaxleak.dp.dp_aggregate` (weight rule, weighted sum, Gaussian noise of std
``noise_multiplier * rule.sensitivity``, normalisation), fed with the
canaries *and* real per-example gradients of a model on real data
(`background_gradients`), so a bug in the rule's declared sensitivity or in
the noise path shows up as a bound above the accountant's epsilon.

What the adversary sees is every released update (white-box, as in
federated or DP-SGD with public iterates). Per step t the score statistic is
the projection ``s_t = <u_c, update_t> * B_norm / Delta``: about
``N(1, sigma^2)`` if the canary was in that step's batch and ``N(0, sigma^2)``
if not (plus the small projection of the other examples' gradients).

  * ``score="sum"``: ``sum_t s_t``. With every canary in every step
    (``sample_rate=1``, full-batch DP-GD) the T steps compose to one Gaussian
    mechanism with ``mu = sqrt(T) / sigma`` and this sum is the
    Neyman-Pearson optimal test.
  * ``score="likelihood_ratio"``: ``sum_t log(1 - q + q exp((s_t - 1/2) /
    sigma^2))``, the exact log-likelihood ratio of "sampled with probability
    q at each step" against "absent": optimal under Poisson subsampling too,
    and equal to the sum (up to an affine map) when q = 1.

Two protocols:

  * `simulate_one_run`: m canaries with mutually orthogonal random
    directions in one run (for `jaxleak.auditing.estimators` ``"one_run"``).
  * `simulate_many_runs`: m independent runs of one canary each (for
    ``"clopper_pearson"`` / ``"gdp"``), each with its own direction, noise
    and inclusion bit.

`privatizer` also builds the deliberately broken mechanisms the audit must
flag: noise halved, or the rule's sensitivity under-declared by 2x (so the
noise is calibrated to half the true sensitivity).
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any, NamedTuple

import jax
from jax import flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak import dp
from jaxleak._src import validate

__all__ = (
  "BROKEN",
  "SCORES",
  "Background",
  "GradientAuditConfig",
  "background_gradients",
  "privatizer",
  "simulate_many_runs",
  "simulate_one_run",
  "step_scores_to_canary_scores",
)

BROKEN = ("none", "half_noise", "half_sensitivity")
SCORES = ("likelihood_ratio", "sum")


@dataclasses.dataclass(frozen=True)
class GradientAuditConfig:
  """The simulated DP mechanism and the adversary's score.

  Attributes:
    steps: number of DP steps T (each releases one noisy update).
    sample_rate: Poisson sampling rate q of every example, canaries included
      (1.0: full batch, every included canary is in every step).
    canary_norm: canary gradient norm as a multiple of the rule's
      sensitivity (far above it, so the rule saturates).
    score: ``"likelihood_ratio"`` or ``"sum"`` (see the module docstring).
    broken: ``"none"``, ``"half_noise"`` or ``"half_sensitivity"``.
  """
  steps: int = 10
  sample_rate: float = 1.0
  canary_norm: float = 100.0
  score: str = "likelihood_ratio"
  broken: str = "none"

  def validate(self) -> None:
    fn = "GradientAuditConfig"
    if int(self.steps) != self.steps or self.steps < 1:
      raise ValueError(f"{fn}: argument 'steps' must be a positive integer, "
                       f"got {self.steps!r}")
    validate.check_in_range(self.sample_rate, "sample_rate", 0.0, 1.0, fn=fn,
                            inclusive=(False, True))
    if not self.canary_norm > 1.0:
      raise ValueError(f"{fn}: argument 'canary_norm' must be > 1 (a multiple "
                       f"of the clip bound), got {self.canary_norm!r}")
    validate.check_choice(self.score, "score", SCORES, fn=fn)
    validate.check_choice(self.broken, "broken", BROKEN, fn=fn)


class Background(NamedTuple):
  """Real per-example gradients of the other examples, flattened.

  Attributes:
    grads: ``[P, d]`` float32, one flattened per-example gradient per row.
    unravel: maps a flat ``[d]`` vector back to the parameter pytree.
  """
  grads: jax.Array
  unravel: Callable[[jax.Array], Any]


def background_gradients(apply_fn: Callable[[Any, jax.Array], jax.Array],
                         params: Any, images: Any, labels: Any, *,
                         loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
                         | None = None) -> Background:
  """Per-example cross-entropy gradients of a model on real examples.

  These are the "other" examples of every simulated batch, so the canary's
  projection also carries their (realistic) interference.
  """
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  loss_fn = loss_fn or models.cross_entropy_loss
  images = jnp.asarray(images, jnp.float32)
  labels = jnp.asarray(labels)
  if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
    raise ValueError("background_gradients: arguments 'images' and 'labels' "
                     "must be non-empty with one label per image, got "
                     f"{images.shape[0]} images and {labels.shape[0]} labels")
  def batch_loss(p, batch):
    x, y = batch
    return loss_fn(apply_fn(p, x), y)
  grads = dp.per_example_grads(batch_loss, params, (images, labels))
  _, unravel = flatten_util.ravel_pytree(params)
  flat = jax.vmap(lambda g: flatten_util.ravel_pytree(g)[0])(grads)
  return Background(grads=flat.astype(jnp.float32), unravel=unravel)


def privatizer(rule: dp.WeightRule, noise_multiplier: float, key: Any, *,
               expected_batch_size: int, broken: str = "none"
               ) -> optax.GradientTransformationExtraArgs:
  """jaxleak's `dp_aggregate` for `rule`, or a deliberately broken copy.

  ``broken="half_noise"``: noise multiplier halved (the accountant still
  assumes the full one). ``broken="half_sensitivity"``: the same weights, but
  the rule declares half its true sensitivity, so `dp_aggregate` calibrates
  the noise to it: the classic bug of a wrong sensitivity proof.
  """
  validate.check_choice(broken, "broken", BROKEN, fn="privatizer")
  if broken == "half_noise":
    noise_multiplier = 0.5 * noise_multiplier
  elif broken == "half_sensitivity":
    rule = dp.custom(rule, 0.5 * rule.sensitivity,
                     name=f"{rule.name}_half_sensitivity")
  return dp.dp_aggregate(rule, noise_multiplier, key,
                         expected_batch_size=expected_batch_size)


def step_scores_to_canary_scores(step_scores: jax.Array, *, score: str,
                                 noise_multiplier: float, sample_rate: float
                                 ) -> jax.Array:
  """Combines per-step projections ``[T, m]`` (units of Delta) into ``[m]``."""
  validate.check_choice(score, "score", SCORES,
                        fn="step_scores_to_canary_scores")
  if score == "sum":
    return jnp.sum(step_scores, axis=0)
  var = float(noise_multiplier) ** 2
  shifted = (step_scores - 0.5) / var  # log N(s; 1, var) - log N(s; 0, var)
  if sample_rate >= 1.0:
    return jnp.sum(shifted, axis=0)
  q = float(sample_rate)
  return jnp.sum(jnp.logaddexp(jnp.log1p(-q), jnp.log(q) + shifted), axis=0)


def _expected_batch(num_background: int, num_canaries: int, q: float) -> int:
  return max(1, round(q * (num_background + 0.5 * num_canaries)))


def _run(key, include, directions, background: Background, rule, sigma,
         cfg: GradientAuditConfig) -> jax.Array:
  """One simulated training run; returns per-step projections ``[T, m]``."""
  num_bg, d = background.grads.shape
  m = directions.shape[0]
  b_norm = _expected_batch(num_bg, m, cfg.sample_rate)
  noise_key, sample_key = jax.random.split(key)
  tx = privatizer(rule, sigma, noise_key, expected_batch_size=b_norm,
                  broken=cfg.broken)
  delta = float(rule.sensitivity)
  canaries = directions * (cfg.canary_norm * delta)
  rows = jnp.concatenate([background.grads, canaries], axis=0)
  per_example = jax.vmap(background.unravel)(rows)
  present = jnp.concatenate([jnp.ones((num_bg,), bool), include])
  state = tx.init(background.unravel(jnp.zeros((d,), jnp.float32)))

  # A Python loop run eagerly, not a jitted scan: every primitive is compiled
  # once per shape and reused across rules and noise levels (the noise
  # multiplier is a Python constant of `dp_aggregate`, so a jitted run would
  # recompile for every audited configuration).
  proj = []
  for step_key in jax.random.split(sample_key, cfg.steps):
    if cfg.sample_rate >= 1.0:
      mask = present
    else:
      mask = present & jax.random.bernoulli(step_key, cfg.sample_rate,
                                            present.shape)
    update, state = tx.update(per_example, state, mask=mask)
    flat = flatten_util.ravel_pytree(update)[0]
    proj.append(directions @ flat * (b_norm / delta))
  return jnp.stack(proj)


def _finish(proj, include, sigma, cfg):
  scores = np.asarray(step_scores_to_canary_scores(
      proj, score=cfg.score, noise_multiplier=sigma,
      sample_rate=cfg.sample_rate), np.float64)
  include = np.asarray(include, bool)
  return scores[include], scores[~include]


def _check_common(rule, noise_multiplier, num_canaries, cfg, fn):
  cfg.validate()
  if not hasattr(rule, "sensitivity") or not callable(rule):
    raise TypeError(f"{fn}: argument 'rule' must be a jaxleak.dp weight rule, "
                    f"got {rule!r}")
  validate.check_positive(noise_multiplier, "noise_multiplier", fn=fn)
  if int(num_canaries) != num_canaries or num_canaries < 2:
    raise ValueError(f"{fn}: argument 'num_canaries' must be an integer >= 2, "
                     f"got {num_canaries!r}")


def _inclusion(key, m) -> jax.Array:
  """Each canary in with probability 1/2; at least one in and one out."""
  include = jax.random.bernoulli(key, 0.5, (m,))
  # A fair coin that happens to leave one side empty (prob 2^(1-m)) gives no
  # audit at all; flipping the first canary then changes nothing else.
  flip = jnp.all(include) | ~jnp.any(include)
  return include.at[0].set(jnp.where(flip, ~include[0], include[0]))


def _disjoint_directions(key, m: int, d: int) -> jax.Array:
  """``[m, d]`` orthonormal rows: Gaussian values on disjoint coordinate sets."""
  perm_key, val_key = jax.random.split(key)
  k = d // m
  coords = jax.random.permutation(perm_key, d)[:m * k].reshape(m, k)
  values = jax.random.normal(val_key, (m, k), jnp.float32)
  values = values / jnp.linalg.norm(values, axis=1, keepdims=True)
  rows = jnp.repeat(jnp.arange(m), k)
  return jnp.zeros((m, d), jnp.float32).at[rows, coords.ravel()].set(
      values.ravel())


def simulate_one_run(rule: dp.WeightRule, noise_multiplier: float,
                     background: Background, *, num_canaries: int, key: Any,
                     config: GradientAuditConfig = GradientAuditConfig()
                     ) -> tuple[np.ndarray, np.ndarray]:
  """All canaries in one simulated run; returns (in_scores, out_scores).

  Directions are random unit vectors on disjoint random sets of
  ``d // m`` coordinates, hence exactly orthogonal: canaries never interfere
  with each other (independent dense directions would, coherently over the
  steps; a QR factorisation would cost ``d m^2``). ``num_canaries`` must not
  exceed the parameter count d.
  """
  fn = "simulate_one_run"
  _check_common(rule, noise_multiplier, num_canaries, config, fn)
  d = background.grads.shape[1]
  if num_canaries > d:
    raise ValueError(f"{fn}: argument 'num_canaries'={num_canaries} exceeds "
                     f"the {d} model parameters; one-run canaries need "
                     "orthogonal directions (use a larger model or fewer)")
  key = validate.canonical_key(key, fn)
  dir_key, inc_key, run_key = jax.random.split(key, 3)
  directions = _disjoint_directions(dir_key, num_canaries, d)
  include = _inclusion(inc_key, num_canaries)
  proj = _run(run_key, include, directions, background, rule,
              noise_multiplier, config)
  return _finish(proj, include, noise_multiplier, config)


def simulate_many_runs(rule: dp.WeightRule, noise_multiplier: float,
                       background: Background, *, num_canaries: int, key: Any,
                       config: GradientAuditConfig = GradientAuditConfig(),
                       chunk_size: int = 100, progress: bool = False
                       ) -> tuple[np.ndarray, np.ndarray]:
  """`num_canaries` independent runs of one canary each (vmapped in chunks).

  Every run has its own random direction, noise, sampling and coin, so the
  scores are i.i.d. given the coin: the setting of Clopper-Pearson audits.
  Returns (in_scores, out_scores).
  """
  fn = "simulate_many_runs"
  _check_common(rule, noise_multiplier, num_canaries, config, fn)
  validate.check_positive(chunk_size, "chunk_size", fn=fn)
  key = validate.canonical_key(key, fn)
  inc_key, runs_key = jax.random.split(key)
  include = _inclusion(inc_key, num_canaries)
  d = background.grads.shape[1]

  def one(k, inc):
    dir_key, run_key = jax.random.split(k)
    u = jax.random.normal(dir_key, (1, d), jnp.float32)
    u = u / jnp.linalg.norm(u)
    return _run(run_key, inc[None], u, background, rule, noise_multiplier,
                config)[:, 0]

  chunk = jax.vmap(one)  # eager, see `_run`
  keys = jax.random.split(runs_key, num_canaries)
  starts = range(0, num_canaries, int(chunk_size))
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    starts = tqdm(starts, desc="simulated runs", unit="chunk",
                  dynamic_ncols=True)
  parts = []
  for s in starts:
    k, inc = keys[s:s + chunk_size], include[s:s + chunk_size]
    n = k.shape[0]
    if n < chunk_size:  # pad the last chunk so the step compiles once
      k = jnp.concatenate([k, keys[:chunk_size - n]])
      inc = jnp.concatenate([inc, include[:chunk_size - n]])
    parts.append(np.asarray(chunk(k, inc))[:n])
  proj = np.concatenate(parts, axis=0).T  # [T, m]
  return _finish(jnp.asarray(proj), include, noise_multiplier, config)
