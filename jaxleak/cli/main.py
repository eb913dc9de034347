"""Entry point of the `jaxleak` console script.

Each subcommand lives in its own module under `jaxleak.cli` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a
``run(args) -> int`` function. Heavy imports happen inside ``run`` so that
``jaxleak --help`` stays instant. Later work adds modules to `SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from typing import NoReturn

# Module names under jaxleak.cli, in the order `jaxleak --help` lists them.
SUBCOMMANDS = (
    "audit",
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
  from jaxleak.cli import _common  # pylint: disable=g-import-not-at-top
  parser = _common.Parser(
      prog="jaxleak",
      description="Gradient leakage and privacy research in JAX.",
      formatter_class=_common.DefaultsHelpFormatter,
  )
  parser.add_argument("--version", action="version", version=f"jaxleak {__version__}")
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
  for name in SUBCOMMANDS:
    importlib.import_module(f"jaxleak.cli.{name}").register(subparsers)
  for sub in subparsers.choices.values():
    # Every --help lists the defaults; usage errors are one line (see Parser).
    sub.formatter_class = _common.DefaultsHelpFormatter
  return parser


def configure_process() -> None:
  """Process-wide settings for entry points (the CLI and the launchers).

  The library itself changes no global state at import; a program that runs
  jaxleak end to end calls this once, before heavy imports:

  * quiet TensorFlow-datasets/absl start-up chatter;
  * orbax logs every save/restore at INFO through absl's logger, which drowns
    the progress bars;
  * never contact the Hugging Face hub (jaxleak only reads local folders and
    passes ``local_files_only=True``; this also covers any other hub client).
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  logging.getLogger("absl").setLevel(logging.WARNING)


def _subparser(parser: argparse.ArgumentParser, command: str):
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      return action.choices[command]
  raise KeyError(command)


# Library errors about a value that a CLI flag passes through unchanged:
# (message prefix, the flag that names it).
_LIBRARY_ARGUMENTS = (
    ("load: dataset ", "--dataset", "load: "),
    ("load_prior: argument 'name_or_path'=", "--prior",
     "load_prior: argument 'name_or_path'="),
)


def _cli_message(e: BaseException) -> str:
  """The library's message, naming the CLI flag where it names its argument.

  `jaxleak.data.load` and `jaxleak.diffusion.load_prior` name themselves
  and their own arguments; on the command line the value came from
  --dataset or --prior.
  """
  text = str(e)
  for prefix, flag, strip in _LIBRARY_ARGUMENTS:
    if text.startswith(prefix):
      return f"argument {flag}: {text[len(strip):]}"
  return text


def _interrupted_message(args: argparse.Namespace) -> str:
  """What a SIGINT outside a checkpointed run loop means for this command."""
  if getattr(args, "resumable", True):
    return (f"jaxleak {args.command}: interrupted; rerun the same command to "
            "resume from the last checkpoint")
  return (f"jaxleak {args.command}: interrupted; nothing was saved (this "
          "command keeps no checkpoints): rerun it to start over")


@contextlib.contextmanager
def _exit_on_sigint_during_native_code(args: argparse.Namespace):
  """Ctrl-C ends a command without checkpoints even inside one XLA call.

  Python runs a SIGINT handler only between bytecodes, so a command whose
  work is one long compiled call (``sample-prior``'s whole DDIM loop is one
  jitted scan) would not react until the call ends (minutes). The C-level
  handler also writes the signal number to a wakeup pipe; a watcher thread
  reading it waits a second for the ordinary KeyboardInterrupt path and, if
  the main thread is still stuck in native code, prints the same message and
  exits with 130. Only for commands that keep no checkpoints (nothing to
  save), and only in the main thread.
  """
  if (getattr(args, "resumable", True)
      or threading.current_thread() is not threading.main_thread()):
    yield
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  handled = threading.Event()
  try:
    previous = signal.set_wakeup_fd(write_fd)
  except ValueError:  # not the main thread of the main interpreter
    os.close(read_fd)
    os.close(write_fd)
    yield
    return

  def watch() -> None:
    while True:
      try:
        data = os.read(read_fd, 64)
      except OSError:
        return
      if not data:  # the pipe was closed: the command ended
        return
      if signal.SIGINT in data and not handled.wait(1.0):
        print(_interrupted_message(args), file=sys.stderr, flush=True)
        os._exit(130)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="jaxleak-sigint", daemon=True).start()
  try:
    yield handled
  finally:
    handled.set()
    signal.set_wakeup_fd(previous)
    os.close(write_fd)
    os.close(read_fd)


def main(argv: list[str] | None = None) -> int:
  configure_process()
  from jaxleak.cli import _common  # pylint: disable=g-import-not-at-top
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
    if getattr(args, "func", None):
      _common.check_finite_args(_subparser(parser, args.command), args)
  except SystemExit as e:  # usage error (exit 2) or --help/--version (0)
    return e.code if isinstance(e.code, int) else 2
  if not getattr(args, "func", None):
    parser.print_help()
    return 2
  try:
    with _exit_on_sigint_during_native_code(args):
      return int(args.func(args) or 0)
  except KeyboardInterrupt as e:
    # jaxleak.runloop.Interrupted says which step it saved.
    print(str(e) or _interrupted_message(args), file=sys.stderr)
    return 130
  except (ValueError, FileNotFoundError, TypeError) as e:
    # Bad input: print the library's message (it names the argument), no trace.
    if os.environ.get("JAXLEAK_DEBUG"):
      raise
    print(f"jaxleak {args.command}: error: {_cli_message(e)}",
          file=sys.stderr)
    return 2
  except RuntimeError as e:
    # A checkpoint that cannot be read or written: one line that says what
    # failed and what to do (jaxleak.checkpoint.CheckpointError).
    from jaxleak import checkpoint  # pylint: disable=g-import-not-at-top
    if (not isinstance(e, checkpoint.CheckpointError)
        or os.environ.get("JAXLEAK_DEBUG")):
      raise
    print(f"jaxleak {args.command}: error: {e}", file=sys.stderr)
    return 2


def run(argv: list[str] | None = None) -> NoReturn:
  """The `jaxleak` console script: `main`, then exit with its code.

  After Ctrl-C (code 130) the process ends with ``os._exit``: a jitted call
  that was running when the signal came may still occupy XLA's threads, and
  a normal interpreter shutdown waits for it (minutes). Everything a command
  writes is on disk by then (checkpoint saves are synchronous).
  """
  code = main(argv)
  if code == 130:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)  # pylint: disable=protected-access
  sys.exit(code)


if __name__ == "__main__":
  run()
