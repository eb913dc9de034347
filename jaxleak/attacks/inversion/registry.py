"""The attack registry: names to attack functions.

An attack is any callable

    attack(observation, *, key, ground_truth=None, callback=None, **hparams)
        -> InversionResult

taking a `GradientObservation` (the same threat model for every attack) and
returning the shared `InversionResult`. `ground_truth` is only used to score
the result. Later attacks (e.g. diffusion-prior guidance) plug in with
`register_attack` and are then available to `run_attack`, the CLI and the
experiments by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jaxleak._src import validate
from jaxleak.attacks.inversion import results
from jaxleak.attacks.inversion import threat_model

__all__ = ("ATTACKS", "AttackFn", "register_attack", "get_attack",
           "available_attacks", "run_attack")

AttackFn = Callable[..., results.InversionResult]

ATTACKS: dict[str, AttackFn] = {}
"""Registered attacks by name; each attack module registers its own."""


def available_attacks() -> list[str]:
  """Registered attack names, sorted."""
  return sorted(ATTACKS)


def register_attack(name: str, fn: AttackFn, *, overwrite: bool = False
                    ) -> AttackFn:
  """Registers `fn` under `name` and returns it (usable as a decorator body).

  Args:
    name: the registry name (a non-empty str).
    fn: ``fn(observation, *, key, ground_truth=None, **hparams) ->
      InversionResult``.
    overwrite: replace an existing entry instead of raising.

  Raises:
    ValueError: if `name` is empty or already taken (without `overwrite`).
    TypeError: if `fn` is not callable.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"register_attack: argument 'name' must be a non-empty "
                     f"str, got {name!r}")
  if not callable(fn):
    raise TypeError(f"register_attack: argument 'fn' must be callable, got "
                    f"{fn!r}")
  if name in ATTACKS and not overwrite:
    raise ValueError(f"register_attack: argument 'name' {name!r} is already "
                     "registered; pass overwrite=True to replace it")
  ATTACKS[name] = fn
  return fn


def get_attack(name: str) -> AttackFn:
  """The attack registered as `name`; ValueError listing the names if none."""
  validate.check_choice(name, "attack", available_attacks(), fn="get_attack")
  return ATTACKS[name]


def run_attack(name: str, observation: threat_model.GradientObservation, *,
               key: Any, **kwargs: Any) -> results.InversionResult:
  """Runs the attack registered as `name` (see `get_attack`)."""
  return get_attack(name)(observation, key=key, **kwargs)
