"""A compiled optimisation loop shared by the optimisation-based attacks.

An attack describes its problem with a `Problem`: a frozen (hashable)
dataclass holding only static configuration, whose methods define the
initial candidate, the objective, the optax optimiser, the projection and an
optional per-step perturbation. Arrays (model parameters, the observed
gradient, labels) and numeric hyper-parameters (weights, learning rate)
travel separately as ``consts`` and are passed to the compiled step as
arguments, never closed over, so XLA does not embed them as constants and one
compiled program serves every trial, restart, noise level and weight setting
with the same shapes.

Two loop strategies (measured with ``benchmarks/inversion_speed.py`` on 2
CPU cores, Inverting Gradients on the 32x32 ConvNet):

* ``"python"`` (default): one jitted step per Python iteration; 8.4 it/s at
  batch 1 and 0.38 it/s at batch 8, and it compiles faster. Dispatch is
  asynchronous: the host only synchronises every `log_every` steps.
* ``"scan"``: jitted chunks of `log_every` steps with ``lax.scan``; 0.56 and
  0.089 it/s in the same setting (XLA:CPU runs these convolutions much slower
  inside a while loop; see /work/shared/spec/environment.md, "Loops on
  XLA:CPU"), but it can win when a step is tiny and dispatch dominates.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxleak.attacks.inversion import _compile

PyTree = Any
Callback = Callable[[int, int, float], None]

__all__ = ("Problem", "minimize", "LOOPS", "ZeroObjectiveError")

LOOPS = ("python", "scan")


class ZeroObjectiveError(ValueError):
  """The objective is exactly 0 at the initial candidate (nothing to do)."""


@dataclasses.dataclass(frozen=True)
class Problem:
  """Static description of an optimisation problem (override the methods).

  Subclasses must stay hashable (frozen dataclasses of ints, floats, strings
  and hashable callables such as a `jaxleak.models.ModelFn`).
  """

  def init(self, key: jax.Array, consts: PyTree) -> PyTree:
    """Initial candidate."""
    raise NotImplementedError

  def objective(self, z: PyTree, consts: PyTree) -> jax.Array:
    """Scalar loss to minimise."""
    raise NotImplementedError

  def optimizer(self, consts: PyTree) -> optax.GradientTransformation:
    """The optax optimiser, built inside the trace (may read traced
    hyper-parameters such as the learning rate from `consts`)."""
    raise NotImplementedError

  @property
  def uses_linesearch(self) -> bool:
    """True for optimisers that need ``value``/``value_fn`` (optax.lbfgs)."""
    return False

  def project(self, z: PyTree) -> PyTree:
    """Projection applied after every step (default: none)."""
    return z

  def perturb(self, z: PyTree, step: jax.Array, key: jax.Array,
              consts: PyTree) -> PyTree:
    """Per-step perturbation after the projection (default: none)."""
    del step, key, consts
    return z


def _strong(tree: PyTree) -> PyTree:
  # optax states start with weakly typed scalars that become strongly typed
  # after one update; canonicalising them up front avoids a second compile.
  return jax.tree.map(
      lambda a: jax.lax.convert_element_type(a, jnp.result_type(a))
      if isinstance(a, jax.Array) else a, tree)


def _one_step(problem: Problem, tx: optax.GradientTransformation, z, opt_state,
              step, key, consts):
  value_fn = lambda v: problem.objective(v, consts)
  if problem.uses_linesearch:
    # Reuses the value and gradient the line search already computed.
    value, grads = optax.value_and_grad_from_state(value_fn)(z, state=opt_state)
    updates, opt_state = tx.update(grads, opt_state, z, value=value,
                                   grad=grads, value_fn=value_fn)
  else:
    value, grads = jax.value_and_grad(value_fn)(z)
    updates, opt_state = tx.update(grads, opt_state, z)
  z = problem.project(optax.apply_updates(z, updates))
  z = problem.perturb(z, step, jax.random.fold_in(key, step), consts)
  return z, opt_state, value


def _init_state(problem: Problem, z, consts):
  return problem.optimizer(consts).init(z)


def _step(problem: Problem, z, opt_state, step, key, consts):
  return _one_step(problem, problem.optimizer(consts), z, opt_state, step,
                   key, consts)


def _chunk(problem: Problem, length: int, z, opt_state, step0, key, consts):
  tx = problem.optimizer(consts)

  def body(carry, i):
    z, s = carry
    z, s, value = _one_step(problem, tx, z, s, step0 + i, key, consts)
    return (z, s), value

  (z, opt_state), values = jax.lax.scan(body, (z, opt_state),
                                        jnp.arange(length, dtype=jnp.int32))
  return z, opt_state, values


_init_state_jit = _compile.jit(_init_state, static_argnums=0)
_step_jit = _compile.jit(_step, static_argnums=0, donate_argnums=(1, 2))
_chunk_jit = _compile.jit(_chunk, static_argnums=(0, 1), donate_argnums=(2, 3))


def _run_once(problem, consts, z, key, steps, loop, log_every, restart,
              callback, stop_if_zero_at_start=False):
  opt_state = _strong(_init_state_jit(problem, z, consts))
  z = _strong(z)
  history: list[Any] = []
  done = 0
  while done < steps:
    n = min(log_every, steps - done)
    if loop == "scan":
      z, opt_state, values = _chunk_jit(problem, n, z, opt_state,
                                    jnp.int32(done), key, consts)
      history.append(values)
    else:
      for i in range(n):
        z, opt_state, value = _step_jit(problem, z, opt_state,
                                    jnp.int32(done + i), key, consts)
        history.append(value)
    if stop_if_zero_at_start and done == 0:
      # The first recorded value is the objective at the initial candidate.
      first = float(np.ravel(np.asarray(history[0]))[0])
      if first == 0.0:
        raise ZeroObjectiveError(
            f"minimize: the objective is 0 at restart {restart}'s initial "
            "candidate")
    done += n
    if callback is not None:
      last = history[-1]
      callback(restart, done, float(last[-1] if jnp.ndim(last) else last))
  values = [np.atleast_1d(np.asarray(v, np.float64))
            for v in jax.device_get(history)]
  return z, np.concatenate(values) if values else np.zeros((0,))


def minimize(problem: Problem, consts: PyTree, *, key: jax.Array, steps: int,
             restarts: int = 1, loop: str = "python", log_every: int = 100,
             callback: Callback | None = None,
             stop_if_zero_at_start: bool = False
             ) -> tuple[PyTree, np.ndarray, tuple[float, ...]]:
  """Runs `restarts` independent optimisations and keeps the best.

  Each restart draws its initial candidate from ``fold_in(key, restart)`` and
  takes `steps` optimiser steps. Restarts are scored by their last recorded
  loss (the objective at the iterate before the final update); a restart
  whose loss is not finite scores +inf.

  Args:
    problem: the static problem description.
    consts: arrays the objective needs (passed to the compiled step).
    key: PRNG key.
    steps: optimiser steps per restart.
    restarts: number of restarts.
    loop: "python" or "scan" (see the module docstring).
    log_every: steps between host synchronisations and `callback` calls (the
      chunk length of the "scan" loop).
    callback: ``callback(restart, steps_done, loss)``, e.g. a progress bar.
    stop_if_zero_at_start: raise `ZeroObjectiveError` after the first
      `log_every` steps of a restart whose objective was exactly 0 at its
      initial candidate (for non-negative objectives such as gradient
      distances, where 0 means there is nothing to minimise).

  Returns:
    ``(z, loss_history, restart_losses)`` for the best restart.

  Raises:
    ZeroObjectiveError: see `stop_if_zero_at_start`.
  """
  best = None
  scores = []
  for r in range(restarts):
    k_init, k_run = jax.random.split(jax.random.fold_in(key, r))
    z0 = problem.init(k_init, consts)
    z, history = _run_once(problem, consts, z0, k_run, steps, loop, log_every,
                           r, callback, stop_if_zero_at_start)
    last = history[-1] if history.size else math.inf
    score = float(last) if np.isfinite(last) else math.inf
    scores.append(score)
    if best is None or score < best[0]:
      best = (score, z, history)
  assert best is not None
  return best[1], best[2], tuple(scores)
