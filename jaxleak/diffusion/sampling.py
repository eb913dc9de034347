"""DDIM and DDPM samplers as `lax.scan` loops with a pluggable step.

The samplers are built from two pieces that attacks can replace:

* an *eps function* ``eps_fn(x_t, t) -> eps`` (`make_eps_fn` builds one from
  a UNet apply function, params, labels and classifier-free guidance);
* a *step function* ``step_fn(x_t, t, t_prev, key) -> x_prev`` that
  `sample_loop` scans over the (t, t_prev) pairs. `ddim_step_fn` and
  `ddpm_step_fn` are the unguided ones; gradient-guided attacks write their
  own step that calls `schedule.ddim_step` / `schedule.ddpm_step` and then
  moves x_prev along a guidance gradient taken through `eps_fn`.

Everything runs under `jit`, and `sample_loop` with ``checkpoint=True``
recomputes each step's activations in the backward pass, so a sampler can be
differentiated end to end (with respect to x_T or the UNet params) in memory
linear in the number of steps.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxleak._src import validate
from jaxleak.diffusion import schedule as schedule_lib
from jaxleak.diffusion.schedule import NoiseSchedule

__all__ = (
    "EpsFn",
    "StepFn",
    "make_eps_fn",
    "ddim_step_fn",
    "ddpm_step_fn",
    "sample_loop",
    "ddim_sample",
    "ddpm_sample",
)

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
"""`eps = eps_fn(x_t, t)` with t a scalar timestep."""
StepFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
"""`x_prev = step_fn(x_t, t, t_prev, key)`."""


def make_eps_fn(apply_fn: Callable[..., jax.Array], params: Any,
                cond: jax.Array | None = None, *,
                guidance_scale: float = 1.0,
                null_cond: jax.Array | None = None) -> EpsFn:
  """Binds a UNet apply function to params, labels and guidance.

  Classifier-free guidance (Ho & Salimans 2022) mixes the conditional and
  unconditional predictions as
  ``eps = eps(x, null) + guidance_scale * (eps(x, cond) - eps(x, null))``;
  guidance_scale = 1 is plain conditional sampling and needs no null label.

  Args:
    apply_fn: `eps = apply_fn(params, x_t, t, cond)`.
    params: the UNet params.
    cond: labels [B] or None (unconditional).
    guidance_scale: the CFG weight; values other than 1 need `null_cond`.
    null_cond: the null labels [B] (e.g. full of `num_classes`).

  Returns:
    `eps_fn(x_t, t)`.
  """
  validate.check_finite_number(guidance_scale, "guidance_scale",
                               fn="make_eps_fn")
  if cond is None or (isinstance(guidance_scale, (int, float))
                      and guidance_scale == 1.0):
    return lambda x, t: apply_fn(params, x, t, cond)
  if null_cond is None:
    raise ValueError(
        "make_eps_fn: argument 'null_cond' is required when guidance_scale "
        f"!= 1 (got guidance_scale={guidance_scale})")

  def eps_fn(x, t):
    # One batched call for both branches: half the dispatches on CPU.
    both = apply_fn(params, jnp.concatenate([x, x]), t,
                    jnp.concatenate([cond, null_cond]))
    e_cond, e_null = jnp.split(both, 2)
    return e_null + guidance_scale * (e_cond - e_null)

  return eps_fn


def ddim_step_fn(schedule: NoiseSchedule, eps_fn: EpsFn, *, eta: float = 0.0,
                 clip_x0: bool = True) -> StepFn:
  """The unguided DDIM step as a `StepFn` (noise drawn from `key` if eta>0)."""
  validate.check_positive(eta, "eta", fn="ddim_step_fn", allow_zero=True)

  def step_fn(x_t, t, t_prev, key):
    eps = eps_fn(x_t, t)
    noise = None
    if not (isinstance(eta, (int, float)) and eta == 0):
      noise = jax.random.normal(key, x_t.shape, x_t.dtype)
    return schedule_lib.ddim_step(schedule, x_t, t, t_prev, eps, eta=eta,
                                  noise=noise, clip_x0=clip_x0).x_prev
  return step_fn


def ddpm_step_fn(schedule: NoiseSchedule, eps_fn: EpsFn, *,
                 clip_x0: bool = True) -> StepFn:
  """The ancestral DDPM step as a `StepFn` (t_prev is ignored: t - 1)."""
  def step_fn(x_t, t, t_prev, key):
    del t_prev
    eps = eps_fn(x_t, t)
    noise = jax.random.normal(key, x_t.shape, x_t.dtype)
    return schedule_lib.ddpm_step(schedule, x_t, t, eps, noise,
                                  clip_x0=clip_x0).x_prev
  return step_fn


def sample_loop(step_fn: StepFn, x_T: jax.Array, timesteps: jax.Array,
                key: jax.Array | None = None, *,
                return_trajectory: bool = False,
                checkpoint: bool = False) -> jax.Array | tuple[jax.Array,
                                                               jax.Array]:
  """Runs `step_fn` over descending `timesteps` with `lax.scan`.

  Args:
    step_fn: `x_prev = step_fn(x_t, t, t_prev, key)`.
    x_T: the starting noise.
    timesteps: int array [S], strictly decreasing; step i goes from
      timesteps[i] to timesteps[i+1] (the last to -1, the clean image).
    key: PRNG key split into one key per step (a fixed key if None; fine
      for deterministic steps).
    return_trajectory: also return every intermediate x (stacked [S, ...]).
    checkpoint: wrap the step in `jax.checkpoint` (rematerialise in the
      backward pass; use when differentiating through the loop).

  Returns:
    x_0, or `(x_0, trajectory)`.
  """
  timesteps = jnp.asarray(timesteps, jnp.int32)
  validate.check_rank(timesteps, "timesteps", 1, fn="sample_loop")
  t_prev = jnp.concatenate([timesteps[1:], jnp.array([-1], jnp.int32)])
  if key is None:
    key = jax.random.key(0)
  keys = jax.random.split(key, timesteps.shape[0])
  step = jax.checkpoint(step_fn) if checkpoint else step_fn

  def body(x, inputs):
    t, tp, k = inputs
    x_prev = step(x, t, tp, k)
    return x_prev, (x_prev if return_trajectory else None)

  x0, traj = jax.lax.scan(body, x_T, (timesteps, t_prev, keys))
  return (x0, traj) if return_trajectory else x0


@functools.partial(jax.jit, static_argnames=(
    "apply_fn", "num_steps", "eta", "guidance_scale", "clip_x0",
    "return_trajectory"))
def ddim_sample(apply_fn: Callable[..., jax.Array], params: Any,
                schedule: NoiseSchedule, x_T: jax.Array,
                cond: jax.Array | None = None, *, num_steps: int = 50,
                eta: float = 0.0, key: jax.Array | None = None,
                guidance_scale: float = 1.0,
                null_cond: jax.Array | None = None, clip_x0: bool = True,
                return_trajectory: bool = False):
  """DDIM sampling in `num_steps` steps (deterministic when eta = 0).

  Args:
    apply_fn: `eps = apply_fn(params, x_t, t, cond)`.
    params: the UNet params (an argument, not a closure: faster scans).
    schedule: the training noise schedule.
    x_T: starting noise [B, H, W, C] (standard normal).
    cond: labels [B] or None.
    num_steps: sampling steps in [1, T] (static).
    eta: DDIM stochasticity (static); > 0 draws noise from `key`.
    key: PRNG key for eta > 0.
    guidance_scale: classifier-free guidance weight (static; 1 = none).
    null_cond: null labels for guidance.
    clip_x0: clip each Tweedie estimate to [-1, 1].
    return_trajectory: also return the intermediate samples.

  Returns:
    Samples in diffusion space [-1, 1] (approximately), shaped like x_T.
  """
  ts = schedule_lib.ddim_timesteps(schedule.num_timesteps, num_steps)
  eps_fn = make_eps_fn(apply_fn, params, cond, guidance_scale=guidance_scale,
                       null_cond=null_cond)
  step = ddim_step_fn(schedule, eps_fn, eta=eta, clip_x0=clip_x0)
  return sample_loop(step, x_T, ts, key, return_trajectory=return_trajectory)


@functools.partial(jax.jit, static_argnames=("apply_fn", "guidance_scale",
                                             "clip_x0"))
def ddpm_sample(apply_fn: Callable[..., jax.Array], params: Any,
                schedule: NoiseSchedule, x_T: jax.Array,
                cond: jax.Array | None = None, *, key: jax.Array,
                guidance_scale: float = 1.0,
                null_cond: jax.Array | None = None,
                clip_x0: bool = True) -> jax.Array:
  """Ancestral DDPM sampling over all T steps (T UNet calls)."""
  ts = jnp.arange(schedule.num_timesteps - 1, -1, -1, dtype=jnp.int32)
  eps_fn = make_eps_fn(apply_fn, params, cond, guidance_scale=guidance_scale,
                       null_cond=null_cond)
  step = ddpm_step_fn(schedule, eps_fn, clip_x0=clip_x0)
  return sample_loop(step, x_T, ts, key)
