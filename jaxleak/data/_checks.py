"""Integer checks for jaxleak.data, in the message style of `_src.validate`.

`jaxleak._src.validate` covers floats, ranges, choices and shapes; the data
pipeline additionally needs exact integers (seeds, sizes, steps), where a
float such as 32.0 or a bool would silently change behaviour.
"""

from __future__ import annotations

import numbers
from typing import Any


def _where(fn: str | None) -> str:
  return f"{fn}: " if fn else ""


def check_int(value: Any, name: str, *, fn: str | None = None,
              low: int | None = None, high: int | None = None) -> int:
  """Returns `value` as a Python int, or raises naming the argument.

  Args:
    value: the value to check; Python and NumPy integers are accepted, bools
      and floats are not.
    name: the argument name, used in the message.
    fn: the public function name, used in the message.
    low: inclusive lower bound, or None for no bound.
    high: inclusive upper bound, or None for no bound.

  Returns:
    `value` converted to a Python int.

  Raises:
    TypeError: if `value` is not an integer.
    ValueError: if `value` is outside [low, high].
  """
  # bool is an Integral subclass, but True as a batch size is always a bug.
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(
        f"{_where(fn)}argument '{name}' must be an integer, got {value!r}")
  v = int(value)
  if (low is not None and v < low) or (high is not None and v > high):
    if low is not None and high is not None:
      bound = f"in [{low}, {high}]"
    elif low is not None:
      bound = f">= {low}"
    else:
      bound = f"<= {high}"
    raise ValueError(f"{_where(fn)}argument '{name}' must be {bound}, got {v}")
  return v
