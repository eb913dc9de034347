"""`jaxleak train`: non-private classifier training with checkpoints and resume."""

from __future__ import annotations

import os

from jaxleak.cli import _common


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "train", help="train a (non-private) classifier; resumes from --workdir",
      description="Train a classifier on an embedded or tfds dataset. Rerunning "
                  "the same command resumes from the newest checkpoint in "
                  "--workdir and ends with the same parameters as an "
                  "uninterrupted run.")
  _common.add_model_args(p, default="cnn_mnist")
  _common.add_data_args(p)
  p.add_argument("--epochs", type=_common.positive_int, default=20)
  p.add_argument("--batch-size", type=_common.positive_int, default=64)
  p.add_argument("--lr", type=_common.positive_float, default=2e-3, help="Adam learning rate (cosine decay)")
  p.add_argument("--weight-decay", type=_common.nonnegative_float,
                 default=0.0, help="AdamW decoupled weight decay")
  p.add_argument("--checkpoint-every", type=_common.positive_int, default=200,
                 help="steps")
  p.add_argument("--preempt-after-steps", type=_common.positive_int,
                 default=None,
                 help="exit (code 75) after this step is checkpointed, as a "
                      "preempted job would; rerun to resume")
  _common.add_run_args(p, workdir="runs/train-<model>-<dataset>")
  p.set_defaults(func=run)


def run(args) -> int:
  from jaxleak import runloop  # pylint: disable=g-import-not-at-top

  _common.check_model_name(args)
  workdir = _common.default_workdir("train", args)
  # Checked before any data loads; removed again if the run fails empty.
  with runloop.workdir_guard(workdir):
    return _train(args, workdir)


def _train(args, workdir: str) -> int:
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import metrics  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak import training  # pylint: disable=g-import-not-at-top

  train_set, test_set = _common.load_splits(args)
  apply_fn, params = _common.create_model(args, train_set, jax.random.key(args.seed))
  config = training.TrainConfig(
      epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
      weight_decay=args.weight_decay, seed=args.seed,
      checkpoint_every=args.checkpoint_every)
  run_info = {"model": args.model, "dataset": args.dataset, "init": args.init,
              "resolution": args.resolution, "data_dir": args.data_dir}
  print(f"training {args.model} on {args.dataset}: {len(train_set)} train / "
        f"{len(test_set)} test images of shape {train_set.image_shape}; "
        f"workdir {workdir}")
  try:
    result = training.train_classifier(
        apply_fn, params, train_set, test_set, config, workdir=workdir,
        progress=not args.no_progress,
        preempt_after_steps=args.preempt_after_steps, run_info=run_info)
  except training.Preempted as e:
    print(f"preempted: {e}; rerun the same command to resume")
    return 75  # EX_TEMPFAIL: the job is incomplete but resumable
  if result.resumed_from is not None:
    print(f"resumed from step {result.resumed_from}")

  history = result.history
  title = f"{args.model} on {args.dataset}"
  curve_path = metrics.save_history_curves(
      history, "epoch", {"train loss": "train_loss", "test loss": "test_loss"},
      os.path.join(workdir, "learning_curve.png"), ylabel="cross-entropy",
      title=title)
  acc_path = metrics.save_history_curves(
      history, "epoch", {"train accuracy": "train_accuracy",
                         "test accuracy": "test_accuracy"},
      os.path.join(workdir, "accuracy_curve.png"), ylabel="accuracy",
      title=title)
  summary = {
      "test_accuracy": result.test_accuracy,
      "final_train_loss": history[-1]["train_loss"] if history else None,
      "steps": result.steps,
      "wall_time_s": result.wall_time_s,
      "resumed_from_step": result.resumed_from,
  }
  report.write_json(os.path.join(workdir, "metrics.json"),
                    {**summary, "history": history, "config": vars_json(args)})
  report.write_report(
      workdir, f"jaxleak train: {args.model} on {args.dataset}",
      summary=summary, tables={"Per-epoch history": history},
      figures={"Learning curve": curve_path, "Accuracy": acc_path},
      config=vars_json(args))
  print(f"test accuracy {result.test_accuracy:.4f} after {result.steps} steps "
        f"({result.wall_time_s:.1f} s in total); wrote {workdir}/metrics.json, "
        "report.md, learning_curve.png, accuracy_curve.png")
  return 0


def vars_json(args) -> dict:
  return {k: v for k, v in vars(args).items() if k != "func"}
