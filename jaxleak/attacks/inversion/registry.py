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

from jaxleak._src.registry import Registry
from jaxleak.attacks.inversion import results
from jaxleak.attacks.inversion import threat_model

__all__ = ("ATTACKS", "AttackFn", "register_attack", "get_attack",
           "available_attacks", "run_attack")

AttackFn = Callable[..., results.InversionResult]

ATTACKS: Registry[AttackFn] = Registry("attack")
"""Registered attacks by name (`available()`, `get(name)`, `register(...)`);
each attack module registers its own."""


def available_attacks() -> list[str]:
  """Registered attack names, sorted (``ATTACKS.available()``)."""
  return ATTACKS.available()


def register_attack(name: str, fn: AttackFn, *, overwrite: bool = False
                    ) -> AttackFn:
  """``ATTACKS.register(name, fn, overwrite=)``: adds an attack, returns it.

  Args:
    name: the registry name (a non-empty str).
    fn: ``fn(observation, *, key, ground_truth=None, **hparams) ->
      InversionResult``.
    overwrite: replace an existing entry instead of raising.

  Raises:
    ValueError: if `name` is empty or already taken (without `overwrite`).
    TypeError: if `fn` is not callable.
  """
  return ATTACKS.register(name, fn, overwrite=overwrite)


def get_attack(name: str) -> AttackFn:
  """The attack registered as `name`; ValueError listing the names if none."""
  return ATTACKS.get(name)


def run_attack(name: str, observation: threat_model.GradientObservation, *,
               key: Any, **kwargs: Any) -> results.InversionResult:
  """Runs the attack registered as `name` (see `get_attack`)."""
  return get_attack(name)(observation, key=key, **kwargs)
