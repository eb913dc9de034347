"""Arguments and set-up shared by several subcommands (model, data, workdir)."""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from typing import Any

# -- argument types -------------------------------------------------------------
# argparse calls these on the flag's text (and on string defaults); an
# ArgumentTypeError becomes "jaxleak CMD: error: argument --FLAG: MESSAGE"
# with exit code 2, before any data or model is loaded.


def _number(text: Any, kind: type) -> Any:
  try:
    value = kind(text)
  except (TypeError, ValueError):
    what = "an integer" if kind is int else "a number"
    raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
  if kind is float and not math.isfinite(value):
    raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
  return value


def finite_float(text: Any) -> float:
  """A finite float (NaN and Inf are rejected)."""
  return _number(text, float)


def _bounded(kind: type, low: float, *, strict: bool, high: float | None = None,
             high_strict: bool = False):
  """A type accepting `kind` values in (low | [low) .. high) | high])."""
  lb = "(" if strict else "["
  rb = ")" if high_strict else "]"
  if high is None:
    rule = f"> {low:g}" if strict else f">= {low:g}"
  else:
    rule = f"in {lb}{low:g}, {high:g}{rb}"

  def convert(text: Any):
    value = _number(text, kind)
    ok = value > low if strict else value >= low
    if high is not None:
      ok = ok and (value < high if high_strict else value <= high)
    if not ok:
      raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
    return value

  convert.__name__ = f"{kind.__name__} {rule}"
  return convert


positive_int = _bounded(int, 0, strict=True)
nonnegative_int = _bounded(int, 0, strict=False)
positive_float = _bounded(float, 0.0, strict=True)
nonnegative_float = _bounded(float, 0.0, strict=False)
open_unit_float = _bounded(float, 0.0, strict=True, high=1.0, high_strict=True)


def at_least(low: float, kind: type = float):
  """A type accepting `kind` values >= `low`."""
  return _bounded(kind, low, strict=False)


def float_range(low: float, high: float, *, low_open: bool = False,
                high_open: bool = False):
  """A float type accepting values between `low` and `high`."""
  return _bounded(float, low, strict=low_open, high=high, high_strict=high_open)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Appends "(default: X)" to every option whose default is informative.

  Options without help text get one too; a default of None (computed at run
  time, the help says how) or False (a switch) is not shown.
  """

  @staticmethod
  def _shown_default(action) -> str | None:
    default = action.default
    if (not action.option_strings or default is None or default is False
        or default is argparse.SUPPRESS or "%(default)" in (action.help or "")):
      return None
    if isinstance(default, (list, tuple)):
      default = " ".join(map(str, default))
    return str(default).replace("%", "%%")

  def _get_help_string(self, action):
    text = (action.help or "").strip()
    shown = self._shown_default(action)
    if shown is None:
      return text
    return f"{text} (default: {shown})".lstrip()

  def _format_action(self, action):
    shown = self._shown_default(action)
    if not action.help and shown is not None:
      action = copy.copy(action)  # argparse prints nothing for an empty help
      action.help = "(default: %(default)s)"
    return super()._format_action(action)


class Parser(argparse.ArgumentParser):
  """An ArgumentParser whose usage errors are one line naming the flag."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def check_finite_args(parser: argparse.ArgumentParser,
                      args: argparse.Namespace) -> None:
  """Rejects NaN/Inf in any float option, naming the flag (a safety net).

  Options declared with the types above are already checked; this catches
  any `type=float` option added later.
  """
  for action in parser._actions:  # pylint: disable=protected-access
    value = getattr(args, action.dest, None)
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
      if isinstance(v, float) and not math.isfinite(v):
        flag = max(action.option_strings, key=len, default=action.dest)
        parser.error(f"argument {flag}: must be finite, got {v!r}")


def check_model_name(args: argparse.Namespace, extra: tuple[str, ...] = ()
                     ) -> None:
  """Fails on an unknown --model or --init before any data is loaded."""
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  names = tuple(models.available()) + tuple(extra)
  if getattr(args, "model", None) is not None and args.model not in names:
    raise ValueError(f"argument --model: unknown model {args.model!r}; "
                     f"choose from {', '.join(names)}")
  init = getattr(args, "init", None)
  if init is not None and init not in models.INIT_SCHEMES:
    raise ValueError(f"argument --init: unknown initialiser {init!r}; "
                     f"choose from {', '.join(models.INIT_SCHEMES)}")


def warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)



def add_data_args(p: argparse.ArgumentParser, *, default: str = "mnist_subset"
                  ) -> None:
  p.add_argument("--dataset", default=default,
                 help="embedded name (digits, mnist_subset, sample_images, "
                      "lfw_faces) or a tfds name prepared under --data-dir")
  p.add_argument("--data-dir", default=None,
                 help="tfds data_dir for non-embedded datasets (offline)")
  p.add_argument("--resolution", type=positive_int, default=None,
                 help="resize images to RES x RES (default: native size)")


def add_model_args(p: argparse.ArgumentParser, *, default: str = "lenet") -> None:
  p.add_argument("--model", default=default,
                 help="lenet, convnet, mlp, cnn_mnist, cnn_cifar or resnet18")
  p.add_argument("--init", default="default",
                 help="initialiser: default, uniform, normal, kaiming or xavier")


def add_run_args(p: argparse.ArgumentParser, *,
                 workdir: str = "runs/<command>-<model>-<dataset>") -> None:
  p.add_argument("--seed", type=nonnegative_int, default=0,
                 help="seed of the model initialisation and data order")
  p.add_argument("--workdir", default=None,
                 help="output folder (checkpoints, metrics.json, report.md, PNGs); "
                      f"default {workdir}")
  p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def default_workdir(command: str, args: argparse.Namespace) -> str:
  """`--workdir`, else runs/<command>-<model>-<dataset>; stored in `args`.

  Storing it makes the config that reports print show the folder used.
  """
  if not args.workdir:
    parts = [command] + [str(getattr(args, k)) for k in ("model", "dataset")
                         if getattr(args, k, None)]
    args.workdir = os.path.join("runs", "-".join(parts))
  return args.workdir


def load_splits(args: argparse.Namespace):
  from jaxleak import data  # pylint: disable=g-import-not-at-top
  train = data.load(args.dataset, "train", args.data_dir, resolution=args.resolution)
  test = data.load(args.dataset, "test", args.data_dir, resolution=args.resolution)
  check_classes(train, args.dataset)
  return train, test


def check_classes(dataset: Any, name: str) -> None:
  """Refuses a dataset with fewer than 2 classes for a classifier command."""
  if dataset.num_classes < 2:
    raise ValueError(
        f"argument --dataset: {name!r} has {dataset.num_classes} class(es); "
        "training or attacking a classifier needs at least 2 (with one class "
        "the cross-entropy and its gradient are identically zero)")


def create_model(args: argparse.Namespace, dataset: Any, key):
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  return models.create(args.model, dataset.num_classes, dataset.image_shape, key,
                       init=args.init)
