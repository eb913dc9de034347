"""`jaxleak dp-audit`: a measured lower bound on epsilon next to the accountant's.

Gradient mode (white-box): simulates the DP aggregation step by step with
jaxleak's own `dp_aggregate`, real per-example gradients of a model on real
data and gradient canaries inserted with probability 1/2; no training.
Input mode (black-box): trains a model (non-private or DP) on a training set
with mislabelled canaries inserted with probability 1/2 and scores them by
their loss.
"""

from __future__ import annotations

import argparse
import os

from jaxleak.cli import _common

RULES = ("clip", "auto_s", "nsgd", "psac", "psasc")
METHODS = ("auto", "one_run", "clopper_pearson", "gdp")


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "dp-audit", help="empirical privacy audit: epsilon lower bound from canaries",
      description="Inserts canaries with probability 1/2, scores them, and turns "
                  "the scores into a lower bound on epsilon (jax-privacy's "
                  "CanaryScoreAuditor) to compare with the accountant's epsilon. "
                  "--mode gradient simulates the DP step white-box (seconds); "
                  "--mode input trains a model with mislabelled canaries.",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--mode", default="gradient", choices=("gradient", "input"),
                 help="gradient: white-box gradient canaries in a simulated DP "
                 "mechanism; input: mislabelled training examples")
  p.add_argument("--rule", default="psasc", choices=RULES,
                 help="per-sample weight rule under audit (clip = DP-SGD)")
  p.add_argument("--epsilon", type=float, default=8.0,
                 help="target epsilon the noise is calibrated to")
  p.add_argument("--delta", type=float, default=1e-5)
  p.add_argument("--non-private", action="store_true",
                 help="input mode: train without DP (epsilon_theory = inf)")
  p.add_argument("--canaries", type=int, default=1000,
                 help="number of canaries (one_run) or of independent runs "
                 "with one canary each (many_runs)")
  p.add_argument("--protocol", default="one_run", choices=("one_run", "many_runs"),
                 help="gradient mode: all canaries in one run, or one canary "
                 "per independent run (input mode is always one_run)")
  p.add_argument("--method", default="auto", choices=METHODS,
                 help="estimator for epsilon_lower_bound (auto: one_run for "
                 "--protocol one_run, gdp for many_runs); all valid ones are "
                 "reported")
  p.add_argument("--confidence", type=float, default=0.95,
                 help="the bound holds with this probability")
  p.add_argument("--broken", default="none",
                 choices=("none", "half_noise", "half_sensitivity"),
                 help="audit a deliberately broken mechanism (the audit should "
                 "flag it)")
  g = p.add_argument_group("gradient mode")
  g.add_argument("--steps", type=int, default=10, help="DP steps simulated")
  g.add_argument("--sample-rate", type=float, default=1.0,
                 help="Poisson sampling rate of every example (1: full batch)")
  g.add_argument("--canary-norm", type=float, default=100.0,
                 help="canary gradient norm, in multiples of the clip bound")
  g.add_argument("--score", default="likelihood_ratio",
                 choices=("likelihood_ratio", "sum"),
                 help="combine per-step projections by log-likelihood ratio or sum")
  g.add_argument("--background", type=int, default=32,
                 help="real examples whose per-example gradients share the batch")
  i = p.add_argument_group("input mode")
  i.add_argument("--epochs", type=float, default=None,
                 help="training epochs (default 40 non-private, 20 DP)")
  i.add_argument("--batch-size", type=int, default=None,
                 help="batch size (default 128 non-private, 256 expected DP)")
  i.add_argument("--lr", type=float, default=None,
                 help="learning rate (default 1e-3 Adam non-private, 1.0 DP SGD)")
  p.add_argument("--clip", type=float, default=1.0, help="C (l2_norm_clip)")
  p.add_argument("--r", type=float, default=0.1, help="PSAC/PSASC/NSGD r")
  p.add_argument("--s", type=float, default=1.0, help="PSASC scale s >= 1")
  p.add_argument("--gamma", type=float, default=0.01, help="Auto-S gamma")
  p.add_argument("--model", default=None,
                 help="model (default: lenet in gradient mode, cnn_mnist in input mode)")
  p.add_argument("--dataset", default=None,
                 help="dataset (default: digits in gradient mode, mnist_subset "
                 "in input mode)")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--init", default="default")
  p.add_argument("--resolution", type=int, default=None)
  _common.add_run_args(p)
  p.set_defaults(func=run)


def _check_args(args) -> None:
  """Validates flags before any data loads; errors name the flag."""
  def err(flag, msg):
    raise ValueError(f"argument {flag}: {msg}")
  import math  # pylint: disable=g-import-not-at-top
  if not (math.isfinite(args.epsilon) and args.epsilon > 0):
    err("--epsilon", f"must be a positive finite number, got {args.epsilon}")
  if not 0 < args.delta < 1:
    err("--delta", f"must be in (0, 1), got {args.delta}")
  if args.canaries < 2:
    err("--canaries", f"must be at least 2, got {args.canaries}")
  if not 0.5 < args.confidence < 1:
    err("--confidence", f"must be in (0.5, 1), got {args.confidence}")
  if args.clip <= 0 or not math.isfinite(args.clip):
    err("--clip", f"must be positive, got {args.clip}")
  for flag, v in (("--r", args.r), ("--gamma", args.gamma)):
    if not (v > 0 and math.isfinite(v)):
      err(flag, f"must be positive, got {v}")
  if not args.s >= 1:
    err("--s", f"must be >= 1, got {args.s}")
  if args.mode == "gradient":
    if args.non_private:
      err("--non-private", "only applies to --mode input (gradient canaries "
          "audit a DP mechanism)")
    if args.steps < 1:
      err("--steps", f"must be a positive integer, got {args.steps}")
    if not 0 < args.sample_rate <= 1:
      err("--sample-rate", f"must be in (0, 1], got {args.sample_rate}")
    if not args.canary_norm > 1:
      err("--canary-norm", f"must be > 1 (a multiple of the clip bound), got "
          f"{args.canary_norm}")
    if args.background < 1:
      err("--background", f"must be a positive integer, got {args.background}")
    if args.method == "one_run" and args.protocol == "many_runs":
      err("--method", "one_run needs --protocol one_run (the canaries must "
          "share one run)")
    if args.method in ("clopper_pearson", "gdp") and args.protocol == "one_run":
      err("--method", f"{args.method} assumes independent runs; use "
          "--protocol many_runs")
  else:
    if args.protocol == "many_runs":
      err("--protocol", "input mode trains one model: only one_run")
    if args.method not in ("auto", "one_run"):
      err("--method", "input mode trains one model with all canaries: only "
          "one_run is valid")
    if args.non_private and args.broken != "none":
      err("--broken", "a broken DP mechanism needs DP training (drop --non-private)")
    if args.broken == "half_sensitivity":
      err("--broken", "input mode supports half_noise only")
    for flag, v in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                    ("--lr", args.lr)):
      if v is not None and not v > 0:
        err(flag, f"must be positive, got {v}")


def _rule(args):
  from jaxleak import dp_training  # pylint: disable=g-import-not-at-top
  return dp_training.make_weight_rule(args.rule, l2_norm_clip=args.clip, r=args.r,
                                      s=args.s, gamma=args.gamma)


def _histogram(in_scores, out_scores, path, title, xlabel) -> str:
  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxleak.metrics import figures  # pylint: disable=g-import-not-at-top
  fig = figures.new_figure((6.4, 4.0), 120)
  ax = fig.subplots()
  lo = float(min(in_scores.min(), out_scores.min()))
  hi = float(max(in_scores.max(), out_scores.max()))
  bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
  ax.hist(out_scores, bins=bins, alpha=0.6, label=f"out ({out_scores.size})")
  ax.hist(in_scores, bins=bins, alpha=0.6, label=f"in ({in_scores.size})")
  ax.set_xlabel(xlabel)
  ax.set_ylabel("canaries")
  ax.set_title(title, fontsize=9)
  ax.legend()
  fig.tight_layout()
  return figures.save_figure(fig, path, 120)


def _gradient_scores(args, rule, workdir):
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak.auditing import gradient_canaries as gc  # pylint: disable=g-import-not-at-top
  from jaxleak.dp import accounting  # pylint: disable=g-import-not-at-top
  cfg = gc.GradientAuditConfig(steps=args.steps, sample_rate=args.sample_rate,
                               canary_norm=args.canary_norm, score=args.score,
                               broken=args.broken)
  cfg.validate()
  train = data.load(args.dataset, "train", args.data_dir,
                    resolution=args.resolution)
  if args.background > len(train):
    raise ValueError(f"argument --background: {args.background} exceeds the "
                     f"{len(train)} training examples of {args.dataset}")
  apply_fn, params = _common.create_model(args, train, jax.random.key(args.seed))
  bg = gc.background_gradients(apply_fn, params, train.images[:args.background],
                               train.labels[:args.background])
  n_params = bg.grads.shape[1]
  if args.protocol == "one_run" and args.canaries > n_params:
    raise ValueError(f"argument --canaries: {args.canaries} one-run canaries need "
                     f"orthogonal directions, but {args.model} has only {n_params} "
                     "parameters (use fewer canaries or a larger --model)")
  sigma = accounting.calibrate_noise(args.epsilon, sample_rate=args.sample_rate,
                                     steps=args.steps, delta=args.delta)
  eps_theory = accounting.epsilon(noise_multiplier=sigma,
                                  sample_rate=args.sample_rate, steps=args.steps,
                                  delta=args.delta)
  print(f"gradient canaries: {args.rule} (sensitivity {rule.sensitivity:g}), "
        f"sigma {sigma:.4f} for epsilon {eps_theory:.3f}, {args.steps} steps at "
        f"q={args.sample_rate:g}, {args.canaries} canaries ({args.protocol}), "
        f"{args.background} real per-example gradients of {args.model} on "
        f"{args.dataset} ({n_params} params), broken={args.broken}")
  key = jax.random.key(args.seed + 7919)
  if args.protocol == "one_run":
    ins, outs = gc.simulate_one_run(rule, sigma, bg, num_canaries=args.canaries,
                                    key=key, config=cfg)
  else:
    ins, outs = gc.simulate_many_runs(rule, sigma, bg, num_canaries=args.canaries,
                                      key=key, config=cfg,
                                      progress=not args.no_progress)
  info = {"noise_multiplier": sigma, "steps": args.steps,
          "sample_rate": args.sample_rate, "num_params": n_params,
          "mu_theory": (args.steps ** 0.5 / sigma if args.sample_rate == 1
                        else None), "score": args.score}
  return ins, outs, eps_theory, info


def _input_scores(args, rule, workdir):
  import dataclasses  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import dp_training  # pylint: disable=g-import-not-at-top
  from jaxleak import training  # pylint: disable=g-import-not-at-top
  from jaxleak.auditing import input_canaries as ic  # pylint: disable=g-import-not-at-top
  train, test = _common.load_splits(args)
  canaries = ic.make_canaries(train, args.canaries, seed=args.seed)
  train_set = ic.training_set(canaries)
  apply_fn, params = _common.create_model(args, train_set, jax.random.key(args.seed))
  run_info = {"model": args.model, "dataset": args.dataset, "canaries": args.canaries,
              "mode": "dp-audit-input"}
  ckdir = os.path.join(workdir, "train")
  print(f"input canaries: {args.canaries} mislabelled {args.dataset} examples, "
        f"{int(canaries.include.sum())} inserted into {len(train_set)} training "
        f"examples; {args.model}, "
        + ("non-private" if args.non_private else
           f"DP {args.rule} at epsilon {args.epsilon:g}"))
  if args.non_private:
    cfg = training.TrainConfig(epochs=int(args.epochs or 40),
                               batch_size=args.batch_size or 128,
                               learning_rate=args.lr or 1e-3, seed=args.seed)
    result = training.train_classifier(apply_fn, params, train_set, test, cfg,
                                       workdir=ckdir, progress=not args.no_progress,
                                       run_info=run_info)
    eps_theory, info = float("inf"), {"train_config": dataclasses.asdict(cfg)}
  else:
    sigma = None
    if args.broken == "half_noise":
      n = len(train_set)
      probe = dp_training.DPTrainConfig(
          rule=args.rule, target_epsilon=args.epsilon, delta=args.delta,
          epochs=args.epochs or 20.0, expected_batch_size=args.batch_size or 256)
      from jaxleak.dp import accounting  # pylint: disable=g-import-not-at-top
      sigma = 0.5 * accounting.calibrate_noise(
          args.epsilon, sample_rate=probe.sample_rate(n),
          steps=probe.num_steps(n), delta=args.delta)
    cfg = dp_training.DPTrainConfig(
        rule=args.rule, l2_norm_clip=args.clip, r=args.r, s=args.s,
        gamma=args.gamma, target_epsilon=None if sigma else args.epsilon,
        noise_multiplier=sigma, delta=args.delta, epochs=args.epochs or 20.0,
        expected_batch_size=args.batch_size or 256, learning_rate=args.lr or 1.0,
        seed=args.seed)
    result = dp_training.train_dp_classifier(
        apply_fn, params, train_set, test, cfg, workdir=ckdir,
        progress=not args.no_progress, run_info=run_info)
    # The claim under audit: what the accountant says for the calibrated noise
    # (for half_noise, the epsilon the un-broken run would have had).
    eps_theory = args.epsilon if sigma else result.epsilon
    info = {"noise_multiplier": result.noise_multiplier,
            "epsilon_accountant_for_noise_used": result.epsilon,
            "train_config": dataclasses.asdict(cfg)}
  info["test_accuracy"] = result.test_accuracy
  info["signal"] = "loss"
  ins, outs = ic.canary_scores(apply_fn, result.params, canaries)
  return ins, outs, eps_theory, info


def run(args) -> int:
  _check_args(args)
  if args.model is None:
    args.model = "lenet" if args.mode == "gradient" else "cnn_mnist"
  if args.dataset is None:
    args.dataset = "digits" if args.mode == "gradient" else "mnist_subset"
  _common.check_model_name(args)  # names --model / --init, before any work
  rule = _rule(args)
  tag = "nonprivate" if args.non_private else f"{args.rule}-eps{args.epsilon:g}"
  if args.broken != "none":
    tag += f"-{args.broken}"
  args.resumable = args.mode == "input"  # only input canaries train
  workdir = args.workdir = (
      args.workdir or os.path.join("runs", f"dp-audit-{args.mode}-{tag}"))
  from jaxleak import runloop  # pylint: disable=g-import-not-at-top
  # Unusable folders fail here, in one line, before any data loads.
  with runloop.workdir_guard(workdir):
    return _audit(args, rule, tag, workdir)


def _audit(args, rule, tag: str, workdir: str) -> int:
  """`run` once the arguments and the workdir are checked."""
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak.auditing import estimators  # pylint: disable=g-import-not-at-top
  if args.mode == "gradient":
    ins, outs, eps_theory, info = _gradient_scores(args, rule, workdir)
    valid = ("one_run",) if args.protocol == "one_run" else ("clopper_pearson", "gdp")
    xlabel = f"canary score ({args.score} of per-step projections)"
  else:
    ins, outs, eps_theory, info = _input_scores(args, rule, workdir)
    valid = ("one_run",)
    xlabel = "canary score (negated loss on the wrong label)"
  method = args.method
  if method == "auto":
    method = "one_run" if args.protocol == "one_run" or args.mode == "input" else "gdp"
  bounds = {m: estimators.epsilon_lower_bound(ins, outs, method=m, delta=args.delta,
                                              confidence=args.confidence)
            for m in valid}
  bound = bounds[method]
  auroc = estimators.attack_auroc(ins, outs)
  finite = eps_theory != float("inf")
  flagged = bool(finite and bound > eps_theory)
  metrics = {
      "mode": args.mode, "rule": None if args.non_private else args.rule,
      "protocol": "one_run" if args.mode == "input" else args.protocol,
      "broken": args.broken, "epsilon_theory": eps_theory,
      "epsilon_lower_bound": bound, "method": method,
      "confidence": args.confidence, "delta": args.delta,
      "tightness": bound / eps_theory if finite and eps_theory > 0 else None,
      "flagged": flagged, "bounds": bounds, "attack_auroc": auroc,
      "num_canaries": int(ins.size + outs.size), "num_in": int(ins.size),
      "num_out": int(outs.size), **info,
  }
  if args.mode == "gradient" and args.protocol == "many_runs":
    mu_lb = estimators.gdp_mu_lower_bound(ins, outs,
                                          significance=1 - args.confidence)
    metrics["mu_lower_bound"] = mu_lb
  report.write_json(os.path.join(workdir, "metrics.json"), metrics)
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.savez(os.path.join(workdir, "scores.npz"), in_scores=ins, out_scores=outs)
  title = (f"dp-audit {args.mode}: {tag}, {metrics['num_canaries']} canaries\n"
           f"epsilon lower bound {bound:.3f} ({method}) vs accountant "
           f"{eps_theory:.3f}")
  png = _histogram(ins, outs, os.path.join(workdir, "canary_scores.png"), title, xlabel)
  verdict = ("FLAGGED: the measured lower bound exceeds the claimed epsilon, the "
             "mechanism does not deliver its guarantee" if flagged else
             "consistent: the lower bound does not exceed the claimed epsilon")
  notes = (
      f"**{verdict}.**\n\nThe lower bound holds with probability "
      f"{args.confidence:g} ({method}; see jaxleak/auditing/estimators.py for what "
      "each method assumes). A bound far below the theory is expected: an audit "
      "with m canaries cannot certify more than a few nats whatever the attack, "
      "and black-box (input) canaries see only the final model.\n")
  summary = {k: metrics[k] for k in ("epsilon_theory", "epsilon_lower_bound",
                                     "method", "confidence", "tightness",
                                     "flagged", "attack_auroc", "num_in", "num_out")}
  summary.update({f"bound_{k}": v for k, v in bounds.items()})
  report.write_report(workdir, f"jaxleak dp-audit ({args.mode}, {tag})",
                      summary=summary, notes=notes,
                      figures={"In/out canary scores": png},
                      config={k: v for k, v in vars(args).items() if k != "func"})
  print(f"epsilon lower bound {bound:.3f} ({method}, confidence {args.confidence:g}) "
        f"vs accountant {eps_theory:.3f}"
        + (f" (tightness {bound / eps_theory:.2f})" if finite else "")
        + f"; attack AUROC {auroc:.3f}; {'FLAGGED' if flagged else 'consistent'}; "
        f"wrote {workdir}/report.md")
  return 0
