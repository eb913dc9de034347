"""`jaxleak train-dp`: DP training with Poisson sampling over all devices."""

from __future__ import annotations

from jaxleak.cli import _common


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "train-dp", help="differentially private training (DP-PSASC and baselines)",
      description="DP training with Poisson sampling; per-sample work is split "
                  "over all local devices and noise is drawn once for the "
                  "global sum. Rerunning resumes params, optimiser state, "
                  "privacy ledger and sampler from --workdir.")
  p.add_argument("--rule", default="psasc",
                 choices=("clip", "auto_s", "nsgd", "psac", "psasc"),
                 help="per-sample weight rule (clip = DP-SGD)")
  _common.add_model_args(p, default="cnn_mnist")
  _common.add_data_args(p)
  p.add_argument("--epsilon", type=_common.positive_float, default=3.0,
                 help="target epsilon for the whole run (noise is calibrated)")
  p.add_argument("--noise-multiplier", type=_common.positive_float,
                 default=None,
                 help="use this sigma instead of calibrating to --epsilon")
  p.add_argument("--delta", type=_common.open_unit_float, default=1e-5,
                 help="delta of (epsilon, delta)-DP")
  p.add_argument("--accountant", default="pld", choices=("pld", "rdp"))
  p.add_argument("--epochs", type=_common.positive_float, default=20.0,
                 help="passes over the data (fractional allowed)")
  p.add_argument("--batch-size", type=_common.positive_int, default=256,
                 help="expected batch size under Poisson sampling")
  p.add_argument("--lr", type=_common.positive_float, default=1.0,
                 help="SGD learning rate")
  p.add_argument("--momentum", type=_common.float_range(0.0, 1.0, high_open=True),
                 default=0.9,
                 help="heavy-ball momentum on the privatised gradient (0: none)")
  p.add_argument("--clip", type=_common.positive_float, default=1.0, help="C (l2_norm_clip)")
  p.add_argument("--r", type=_common.positive_float, default=0.1, help="PSAC/PSASC/NSGD r")
  p.add_argument("--s", type=_common.at_least(1.0), default=1.0, help="PSASC scale s >= 1")
  p.add_argument("--gamma", type=_common.positive_float, default=0.01, help="Auto-S gamma")
  p.add_argument("--path", default="auto",
                 choices=("auto", "layerwise", "mixed", "vmap", "two_pass"),
                 help="per-sample gradient path (auto: layerwise when every "
                 "parameter is a Dense/Conv/Embed kernel or bias, the fastest "
                 "on the benchmark; mixed when some are (norm scales per "
                 "example); else vmap; two_pass: no B x params buffer)")
  p.add_argument("--microbatch-size", type=_common.positive_int, default=None,
                 help="examples per per-sample-gradient chunk (default: all)")
  p.add_argument("--devices", type=_common.positive_int, default=None,
                 help="number of local devices to use (default: all)")
  p.add_argument("--checkpoint-every", type=_common.positive_int, default=100,
                 help="steps")
  p.add_argument("--preempt-after-steps", type=_common.positive_int,
                 default=None, help="exit (code 75) once this step is "
                 "checkpointed; rerun to resume")
  _common.add_run_args(p, workdir="runs/train-dp-<rule>-<model>-<dataset>")
  p.set_defaults(func=run)


def run(args) -> int:
  from jaxleak import runloop  # pylint: disable=g-import-not-at-top

  _common.check_model_name(args)
  workdir = _common.default_workdir(f"train-dp-{args.rule}", args)
  # Checked before any data loads; removed again if the run fails empty.
  with runloop.workdir_guard(workdir):
    return _train(args, workdir)


def _train(args, workdir: str) -> int:
  # pylint: disable=g-import-not-at-top
  import jax

  from jaxleak import dp_training
  from jaxleak import runloop
  from jaxleak import sharding
  # pylint: enable=g-import-not-at-top
  train_set, test_set = _common.load_splits(args)
  apply_fn, params = _common.create_model(args, train_set, jax.random.key(args.seed))
  use_sigma = args.noise_multiplier is not None
  config = dp_training.DPTrainConfig(
      rule=args.rule, l2_norm_clip=args.clip, r=args.r, s=args.s,
      gamma=args.gamma, target_epsilon=None if use_sigma else args.epsilon,
      noise_multiplier=args.noise_multiplier, delta=args.delta,
      epochs=args.epochs, expected_batch_size=args.batch_size,
      learning_rate=args.lr, momentum=args.momentum or None, seed=args.seed,
      path=args.path, microbatch_size=args.microbatch_size,
      accountant=args.accountant, checkpoint_every=args.checkpoint_every)
  mesh = sharding.data_mesh(args.devices)
  print(f"DP training ({args.rule}) of {args.model} on {args.dataset}: "
        f"{len(train_set)} examples, expected batch {args.batch_size}, "
        f"{mesh.shape['data']} device(s); workdir {workdir}")
  try:
    result = dp_training.train_dp_classifier(
        apply_fn, params, train_set, test_set, config, mesh=mesh,
        workdir=workdir, progress=not args.no_progress,
        preempt_after_steps=args.preempt_after_steps,
        run_info={"model": args.model, "dataset": args.dataset,
                  "init": args.init, "resolution": args.resolution})
  except runloop.Preempted as e:
    print(f"preempted: {e}; rerun the same command to resume")
    return 75
  dp_training.write_dp_report(
      workdir, result, config,
      f"jaxleak train-dp: {args.rule} / {args.model} on {args.dataset}")
  print(f"test accuracy {result.test_accuracy:.4f} at epsilon "
        f"{result.epsilon:.3f} (delta {args.delta:g}, sigma "
        f"{result.noise_multiplier:.3f}) after {result.steps} steps "
        f"({result.wall_time_s:.1f} s in total); wrote {workdir}/metrics.json, "
        "report.md, accuracy_curve.png, epsilon_curve.png")
  return 0
