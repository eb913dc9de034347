"""Entry point of the `jaxleak` console script.

Each subcommand lives in its own module under `jaxleak.cli` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a
``run(args) -> int`` function. Heavy imports happen inside ``run`` so that
``jaxleak --help`` stays instant. Later work adds modules to `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Module names under jaxleak.cli, in the order `jaxleak --help` lists them.
SUBCOMMANDS = (
    "info",
    "train",
    "dp",
    "prior",
    "unlearn",
    "attack",
    "i2f",
    "dp_audit",
)


def build_parser() -> argparse.ArgumentParser:
  from jaxleak import __version__  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(
      prog="jaxleak",
      description="Gradient leakage and privacy research in JAX.",
  )
  parser.add_argument("--version", action="version", version=f"jaxleak {__version__}")
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name in SUBCOMMANDS:
    importlib.import_module(f"jaxleak.cli.{name}").register(subparsers)
  return parser


def main(argv: list[str] | None = None) -> int:
  # Quiet TensorFlow-datasets/absl start-up chatter before anything imports them.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  parser = build_parser()
  args = parser.parse_args(argv)
  if not getattr(args, "func", None):
    parser.print_help()
    return 2
  try:
    return int(args.func(args) or 0)
  except KeyboardInterrupt:
    print("interrupted; rerun the same command to resume from the last checkpoint",
          file=sys.stderr)
    return 130
  except (ValueError, FileNotFoundError, TypeError) as e:
    # Bad input: print the library's message (it names the argument), no trace.
    if os.environ.get("JAXLEAK_DEBUG"):
      raise
    print(f"jaxleak {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
