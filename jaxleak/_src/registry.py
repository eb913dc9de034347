"""`Registry`: the one name -> entry table behind every jaxleak registry.

Models, datasets, attacks, cases, defences and unlearners are all looked up by
name the same way (breaching's design: attacks and cases as registries):

* ``available()`` -- the registered names, sorted;
* ``get(name)`` -- the entry, or a ValueError naming the argument and listing
  the registered names;
* ``register(name, entry, overwrite=False)`` -- adds an entry (also usable
  as a decorator: ``@REGISTRY.register("name")``).

A `Registry` is a ``dict`` subclass, so ``REGISTRY[name]``, ``name in
REGISTRY``, iteration and ``del REGISTRY[name]`` keep working. ``get`` with a
second argument behaves like ``dict.get`` (a default instead of an error).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from jaxleak._src import validate

__all__ = ("Registry",)

T = TypeVar("T")
_MISSING = object()


class Registry(dict[str, T]):
  """A name -> entry table with `available`, `get` and `register`.

  Attributes:
    kind: what the entries are ("attack", "model", ...), used in messages.
  """

  def __init__(self, kind: str, entries: Iterable[tuple[str, T]] | dict[str, T]
               = (), *, check: Callable[[Any], bool] = callable,
               requirement: str = "callable"):
    """Creates a registry.

    Args:
      kind: what the entries are, for error messages.
      entries: initial ``(name, entry)`` pairs or a mapping.
      check: predicate every registered entry must satisfy.
      requirement: what `check` requires, for the TypeError message.
    """
    super().__init__()
    self.kind = kind
    self._check = check
    self._requirement = requirement
    for name, entry in dict(entries).items():
      self.register(name, entry)

  def available(self) -> list[str]:
    """The registered names, sorted."""
    return sorted(self)

  def get(self, name: str, default: Any = _MISSING) -> T:
    """The entry registered as `name`.

    Args:
      name: a registered name.
      default: if given, returned for an unknown name (``dict.get``).

    Raises:
      ValueError: for an unknown name without a default; the message names
        the argument (the registry's `kind`) and lists the registered names.
    """
    if name in self:
      return self[name]
    if default is not _MISSING:
      return default
    validate.check_choice(name, self.kind, self.available(),
                          fn=f"get {self.kind}")
    raise AssertionError("unreachable")  # check_choice raised.

  def register(self, name: str, entry: Any = _MISSING, *,
               overwrite: bool = False) -> Any:
    """Registers `entry` under `name` and returns it.

    Without `entry`, returns a decorator that registers the function it
    decorates: ``@REGISTRY.register("name")``.

    Args:
      name: a non-empty str.
      entry: the entry (checked with the registry's predicate).
      overwrite: replace an existing entry instead of raising.

    Raises:
      ValueError: if `name` is empty or already registered (without
        `overwrite`).
      TypeError: if `entry` fails the registry's check.
    """
    fn = f"register {self.kind}"
    if not isinstance(name, str) or not name:
      raise ValueError(f"{fn}: argument 'name' must be a non-empty str, got "
                       f"{name!r}")
    if entry is _MISSING:
      return lambda e: self.register(name, e, overwrite=overwrite)
    if not self._check(entry):
      raise TypeError(f"{fn}: the {self.kind} {name!r} must be "
                      f"{self._requirement}, got {entry!r}")
    if name in self and not overwrite:
      raise ValueError(f"{fn}: argument 'name' {name!r} is already "
                       "registered; pass overwrite=True to replace it")
    self[name] = entry
    return entry

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}, {self.available()})"
