"""`jaxleak audit`: an end-to-end privacy audit of a model, in one report.

Example::

  jaxleak audit --quick                     # ~5 min on 2 CPU cores
  jaxleak audit                             # the full audit
  jaxleak audit --checkpoint runs/train-cnn_mnist-mnist_subset

Trains the model non-privately and with DP (or audits a `jaxleak train`
checkpoint), attacks its gradients (Inverting Gradients, the diffusion-guided
attack), ranks training images by I²F risk, runs loss and LiRA membership
inference, audits each DP mechanism with gradient canaries and unlearns a
share of the data with Mini-Unlearning. Writes report.html (self-contained),
report.md, metrics.json and PNG figures; rerunning resumes.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import time

from jaxleak.cli import _common

_STAGE_NAMES = ("models", "reconstruction", "i2f", "membership",
                "empirical_epsilon", "unlearning")


def _floats(text: str) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated numbers, got {text!r}") from None
  return values


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "audit", help="end-to-end privacy audit of a model (the main job)",
      formatter_class=_common.DefaultsHelpFormatter,
      description="Measures how much a model and its training leak, and how "
                  "much DP buys: trains it non-privately and with DP (or "
                  "audits --checkpoint), runs gradient inversion, I²F, "
                  "membership inference, a DP canary audit and "
                  "Mini-Unlearning, and writes report.html. Rerunning the "
                  "same command resumes where it stopped.")
  p.add_argument("--dataset", default="mnist_subset",
                 help="embedded name or a tfds name prepared under --data-dir")
  p.add_argument("--data-dir", default=None, help="tfds data_dir (offline)")
  p.add_argument("--model", default="cnn_mnist", help="registered model")
  p.add_argument("--checkpoint", default=None,
                 help="audit this `jaxleak train` workdir's model instead of "
                      "training the non-private model")
  p.add_argument("--quick", action="store_true",
                 help="smaller budgets (about 5 minutes on 2 CPU cores)")
  p.add_argument("--epsilons", type=_floats, default=None,
                 help="DP epsilons, comma-separated (default: 1,2,8; quick: "
                      "2,8)")
  p.add_argument("--rules", default="psasc,clip",
                 help="DP weight rules, comma-separated (clip = DP-SGD)")
  p.add_argument("--rerun", default="",
                 help="stages to recompute, comma-separated: "
                      + ", ".join(_STAGE_NAMES))
  p.add_argument("--set", dest="overrides", action="append", default=None,
                 metavar="FIELD=VALUE",
                 help="override one AuditConfig field (repeatable), e.g. "
                      "--set ig_steps=2000 --set lira_shadows=32")
  p.add_argument("--seed", type=_common.nonnegative_int, default=0,
                 help="seed of every stage")
  p.add_argument("--workdir", default=os.path.join("runs", "audit"),
                 help="output folder")
  p.add_argument("--no-progress", action="store_true", help="hide progress bars")
  p.set_defaults(func=run)


def _command(args) -> str:
  parts = ["jaxleak", "audit"]
  if args.quick:
    parts.append("--quick")
  for flag in ("dataset", "model", "data_dir", "checkpoint", "rules", "seed",
               "workdir"):
    v = getattr(args, flag)
    if v is not None:
      parts += [f"--{flag.replace('_', '-')}", str(v)]
  if args.epsilons:
    parts += ["--epsilons", ",".join(f"{e:g}" for e in args.epsilons)]
  for item in args.overrides or []:
    parts += ["--set", item]
  return shlex.join(parts)


def _parse_overrides(items) -> dict:
  """`--set field=value` pairs, typed like the AuditConfig field."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  from jaxleak.privacy_audit import pipeline  # pylint: disable=g-import-not-at-top
  fields = {f.name: f for f in dataclasses.fields(pipeline.AuditConfig)}
  defaults = pipeline.AuditConfig()
  out = {}
  for item in items:
    name, sep, text = item.partition("=")
    if not sep or name not in fields:
      raise ValueError(
          f"audit: argument '--set' {item!r} must be FIELD=VALUE with FIELD "
          f"one of {', '.join(fields)}")
    default = getattr(defaults, name)
    try:
      if isinstance(default, tuple):
        cast = str if default and isinstance(default[0], str) else float
        value = tuple(cast(v) for v in text.split(",") if v.strip())
      elif isinstance(default, bool):
        value = {"true": True, "false": False}[text.lower()]
      elif isinstance(default, int):
        value = int(text)
      elif isinstance(default, float):
        value = float(text)
      else:
        value = None if text.lower() == "none" else text
    except (ValueError, KeyError):
      raise ValueError(f"audit: argument '--set' {item!r}: cannot read "
                       f"{text!r} as a {type(default).__name__}") from None
    out[name] = value
  return out


def _config(args):
  from jaxleak import dp  # pylint: disable=g-import-not-at-top
  from jaxleak.privacy_audit import pipeline  # pylint: disable=g-import-not-at-top
  rules = tuple(r.strip() for r in args.rules.split(",") if r.strip())
  for r in rules:
    if r not in dp.RULES:
      raise ValueError(f"audit: argument '--rules' {r!r} is not one of "
                       f"{', '.join(dp.RULES)}")
  if not rules:
    raise ValueError("audit: argument '--rules' is empty")
  overrides = dict(dataset=args.dataset, model=args.model,
                   data_dir=args.data_dir, seed=args.seed, dp_rules=rules,
                   checkpoint=args.checkpoint)
  overrides.update(_parse_overrides(args.overrides or []))
  if args.epsilons is not None:
    bad = [e for e in args.epsilons if not 0 < e < float("inf")]
    if bad or not args.epsilons:
      raise ValueError("argument --epsilons: must be positive finite "
                       f"numbers, got {args.epsilons}")
    overrides["dp_epsilons"] = args.epsilons
  preset = pipeline.AuditConfig.quick if args.quick else pipeline.AuditConfig.full
  return preset(**overrides)


# AuditConfig fields that have their own flag; every other one is --set FIELD.
_FIELD_FLAGS = {"dataset": "--dataset", "model": "--model", "seed": "--seed",
                "dp_epsilons": "--epsilons", "dp_rules": "--rules",
                "checkpoint": "--checkpoint"}


def _validate(config) -> None:
  """`config.validate()`, its errors naming the CLI flag, not the field."""
  try:
    config.validate()
  except ValueError as e:
    match = re.match(r"AuditConfig: argument '(\w+)'", str(e))
    if match is None:
      raise
    name = match.group(1)
    flag = _FIELD_FLAGS.get(name, f"--set {name}")
    raise ValueError(f"argument {flag}:" + str(e)[match.end():]) from None


def run(args) -> int:
  from jaxleak import runloop  # pylint: disable=g-import-not-at-top
  rerun = tuple(s.strip() for s in args.rerun.split(",") if s.strip())
  for s in rerun:
    if s not in _STAGE_NAMES:
      raise ValueError(f"audit: argument '--rerun' {s!r} is not one of "
                       f"{', '.join(_STAGE_NAMES)}")
  _common.check_model_name(args)
  config = _config(args)
  _validate(config)
  # Checked before any data loads; removed again if the run fails empty.
  with runloop.workdir_guard(args.workdir):
    return _audit(args, config, rerun)


def _audit(args, config, rerun) -> int:
  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak.privacy_audit import pipeline  # pylint: disable=g-import-not-at-top
  from jaxleak.privacy_audit import report  # pylint: disable=g-import-not-at-top

  command = _command(args)
  print(f"privacy audit of {config.model} on {config.dataset} "
        f"({'quick' if args.quick else 'full'}); workdir {args.workdir}",
        flush=True)
  seconds: dict[str, float] = {}

  def on_stage(name: str, s: float) -> None:
    seconds[name] = s
    print(f"  {name}: done in {s:.1f} s", flush=True)

  t0 = time.perf_counter()
  results = pipeline.run_audit(config, args.workdir,
                               progress=not args.no_progress, rerun=rerun,
                               on_stage=on_stage)
  train = data.load(config.dataset, "train", config.data_dir)
  paths = report.write_audit_report(args.workdir, config, results,
                                    train.images, command=command,
                                    stage_seconds=seconds)
  print(f"audit finished in {time.perf_counter() - t0:.1f} s")
  rows = report.summary_rows(results)
  for r in rows:
    cells = [f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
             for k, v in r.items() if k != "model"]
    print(f"  {r['model']:20s} " + ", ".join(cells))
  written = ", ".join(os.path.basename(p) for p in paths.values())
  print(f"wrote {args.workdir}/: {written}")
  return 0
