"""jaxleak: gradient leakage and privacy research in JAX.

Sub-packages are imported lazily so that ``import jaxleak`` stays cheap and
``jaxleak.diffusion`` (which imports diffusers) is only loaded when used.
"""

import importlib

__version__ = "0.1.0"

# A literal tuple, so that linters and IDEs can read the public names.
__all__ = (
    "__version__",
    "data",
    "models",
    "metrics",
    "checkpoint",
    "training",
    "runloop",
    "dp_training",
    "dp",
    "attacks",
    "diffusion",
    "influence",
    "unlearning",
    "cli",
    "launch",
)
_SUBMODULES = __all__[1:]


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"jaxleak.{name}")
  raise AttributeError(f"module 'jaxleak' has no attribute {name!r}")
