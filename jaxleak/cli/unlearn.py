"""`jaxleak unlearn`: train with history, unlearn a random forget set, evaluate.

Example::

  jaxleak unlearn --method mini_unlearning --dataset mnist_subset \\
      --model cnn_mnist --ratio 0.1 --workdir runs/unlearn

The original model and its history are stored in --workdir (orbax) and
reused by later runs with the same model, data and recipe, so trying other
methods or ratios only pays for unlearning. Retraining (the reference) is
always run. Writes metrics.json, report.md and roc_forget.png.
"""

from __future__ import annotations

import os
import re
import sys

from jaxleak.cli import _common

LOGREG = "logreg"
# The registry's lenet and mlp default to sigmoid (and lenet to U(-0.5, 0.5)
# weights), the setting of DLG-style gradient inversion. Under this command's
# plain-SGD recipe (lr 0.2, batch 128, 20 epochs) that trains badly: test
# accuracy on digits 0.42 (mlp) and 0.45 (lenet). With ReLU (and Kaiming
# init for lenet, whose U(-0.5, 0.5) weights make a ReLU LeNet diverge on
# mnist_subset) they reach 0.96 / 0.95 on digits and 0.94 / 0.96 on
# mnist_subset. Explicit --act / --init override these.
TRAINING_DEFAULTS = {"lenet": {"act": "relu", "init": "kaiming"},
                     "mlp": {"act": "relu"}}
MODEL_RECORD = "unlearn_model.json"


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "unlearn", help="machine unlearning (Mini-Unlearning, DeltaGrad, ...) "
                      "with accuracy, distance-to-retrain, time and MIA",
      description="Trains a model with SGD while recording the unlearning "
                  "history (reused from --workdir when present), forgets a "
                  "random --ratio of the training set with --method, retrains "
                  "as the reference and reports test/forget accuracy, "
                  "||w - w_retrain||, wall time and forget-set membership "
                  "inference for every model. --model logreg is softmax "
                  "regression (the convex setting of DeltaGrad).")
  p.add_argument("--method", default="mini_unlearning",
                 help="unlearner(s), comma-separated: mini_unlearning, "
                      "finetune, neg_grad, deltagrad (retrain always runs)")
  p.add_argument("--ratio", type=_common.open_unit_float, default=0.1,
                 help="fraction of the training set to forget (random)")
  p.add_argument("--forget-seed", type=_common.nonnegative_int, default=None,
                 help="seed of the forget set (default: --seed)")
  _common.add_model_args(p, default="cnn_mnist")
  p.set_defaults(init=None)
  p.add_argument("--act", default=None,
                 help="activation of lenet, mlp, convnet, cnn_mnist or "
                      "cnn_cifar. Default: relu for lenet and mlp (with "
                      "kaiming --init for lenet), whose sigmoid defaults "
                      "train to under half the accuracy with plain SGD; the "
                      "model's own activation and init for the others")
  _common.add_data_args(p)
  g = p.add_argument_group("training recipe (plain SGD + L2, replayable)")
  g.add_argument("--epochs", type=_common.positive_int, default=20,
                 help="training epochs of the original and retrained model")
  g.add_argument("--batch-size", type=_common.positive_int, default=128,
                 help="SGD minibatch size")
  g.add_argument("--lr", type=_common.positive_float, default=0.2,
                 help="initial SGD learning rate")
  g.add_argument("--schedule", default="step",
                 help="constant, step (halve after half) or cosine")
  g.add_argument("--l2", type=_common.nonnegative_float, default=5e-4,
                 help="L2 regularisation strength")
  g = p.add_argument_group("history")
  g.add_argument("--snapshots", type=_common.positive_int, default=2,
                 help="epoch-end (params, full gradient) snapshots kept")
  g.add_argument("--no-step-cache", action="store_true",
                 help="do not keep DeltaGrad's per-step cache")
  g.add_argument("--max-history-mb", type=_common.positive_float, default=1024.0,
                 help="memory budget of the recorded history")
  g.add_argument("--on-budget", default="raise", choices=("raise", "stride"),
                 help="over --max-history-mb: stop, or cache every s-th step")
  g = p.add_argument_group("methods")
  g.add_argument("--steps", type=_common.positive_int, default=3,
                 help="mini_unlearning: contraction steps")
  g.add_argument("--memory", type=_common.positive_int, default=10,
                 help="mini_unlearning: L-BFGS memory")
  g.add_argument("--precondition", default="lbfgs", choices=("lbfgs", "none"),
                 help="mini_unlearning: preconditioner")
  g.add_argument("--step-size", type=_common.positive_float, default=None,
                 help="mini_unlearning: step size (default: its own)")
  g.add_argument("--max-step-norm", type=_common.positive_float, default=None,
                 help="mini_unlearning: trust region (default: none)")
  g.add_argument("--finetune-epochs", type=_common.positive_int, default=2,
                 help="finetune: epochs on the retained data")
  g.add_argument("--neggrad-lr", type=_common.positive_float, default=None,
                 help="neg_grad: learning rate (default: its own)")
  g.add_argument("--period", type=_common.positive_int, default=5, help="deltagrad: T0")
  g.add_argument("--burn-in", type=_common.nonnegative_int, default=20, help="deltagrad: j0")
  g.add_argument("--lbfgs-memory", type=_common.positive_int, default=2, help="deltagrad: m")
  g = p.add_argument_group("evaluation")
  g.add_argument("--devices", type=_common.positive_int, default=None,
                 help="shard mini_unlearning over this many devices (on CPU, "
                      "virtual devices are created when jax is not yet "
                      "initialised); default: all")
  g.add_argument("--lira-shadows", type=_common.nonnegative_int, default=0,
                 help="train this many shadow models (even) for offline LiRA")
  g.add_argument("--warmup", action="store_true",
                 help="time each method after an untimed run (no compile)")
  _common.add_run_args(p, workdir="runs/unlearn-<model>-<dataset>")
  p.set_defaults(func=run)


def _method_kwargs(args) -> dict[str, dict]:
  return {
      "mini_unlearning": dict(steps=args.steps, memory=args.memory,
                              precondition=args.precondition,
                              step_size=args.step_size,
                              max_step_norm=args.max_step_norm),
      "finetune": dict(epochs=args.finetune_epochs),
      "neg_grad": dict(learning_rate=args.neggrad_lr),
      "deltagrad": dict(period=args.period, burn_in=args.burn_in,
                        memory=args.lbfgs_memory),
  }


def create_model(args, dataset, key):
  """The CLI's models: the registry's, plus "logreg" (softmax regression)."""
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  if args.model == LOGREG:
    return models.create("mlp", dataset.num_classes, dataset.image_shape, key,
                         init=args.init or "default", hidden=())
  act, init = _act_and_init(args)
  return models.create(args.model, dataset.num_classes, dataset.image_shape,
                       key, init=init, **({"act": act} if act else {}))


def _act_and_init(args) -> tuple[str | None, str]:
  defaults = TRAINING_DEFAULTS.get(args.model, {})
  return (args.act or defaults.get("act"),
          args.init or defaults.get("init", "default"))


def model_record(args) -> dict:
  """What identifies the trained model besides its recipe and init values."""
  act, init = _act_and_init(args)
  return {"model": args.model, "init": init, "dataset": args.dataset,
          "resolution": args.resolution,
          "act": None if args.model == LOGREG else act}


def run(args) -> int:
  if args.devices and args.devices > 1 and "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={args.devices}").strip()
  from jaxleak import unlearning as ul  # pylint: disable=g-import-not-at-top

  methods = [m.strip() for m in args.method.split(",") if m.strip()]
  for m in methods:
    if m not in ul.available():
      raise ValueError(
          f"unlearn: argument '--method' {m!r} is not one of "
          f"{', '.join(ul.available())}")
  _common.check_model_name(args, extra=(LOGREG,))
  if args.snapshots > args.epochs - 1:
    raise ValueError(
        f"argument --snapshots: must be at most --epochs - 1 = "
        f"{args.epochs - 1} (one per earlier epoch end), got {args.snapshots}")
  if args.lira_shadows % 2:
    raise ValueError("argument --lira-shadows: must be even (each example is "
                     f"IN for half of the shadows), got {args.lira_shadows}")
  workdir = _common.default_workdir("unlearn", args)
  from jaxleak import runloop  # pylint: disable=g-import-not-at-top
  # One-line error before data loads; no empty folder left if it fails.
  with runloop.workdir_guard(workdir):
    return _unlearn(args, methods, workdir)


def _unlearn(args, methods: list[str], workdir: str) -> int:
  """`run` once the arguments and the workdir are checked."""
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak import sharding  # pylint: disable=g-import-not-at-top
  from jaxleak import unlearning as ul  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import membership as mia  # pylint: disable=g-import-not-at-top
  from jaxleak.unlearning import evaluation  # pylint: disable=g-import-not-at-top

  progress = not args.no_progress
  train, test = _common.load_splits(args)
  apply_fn, params0 = create_model(args, train, jax.random.key(args.seed))
  recipe = ul.sgd_recipe(args.epochs, args.batch_size, args.lr,
                         schedule=args.schedule, l2=args.l2, seed=args.seed)

  act, init = _act_and_init(args)
  print(f"unlearn: {args.model} (act {act or 'its own'}, init {init}) on "
        f"{args.dataset}: {len(train)} train / {len(test)} test images; SGD "
        f"lr {args.lr:g} ({args.schedule}), batch {args.batch_size}, "
        f"{args.epochs} epochs; workdir {workdir}", flush=True)
  history = _load_or_train(args, ul, apply_fn, params0, train, recipe,
                           workdir, progress)
  model = ul.Model(apply_fn, history.final_params)
  quality = _check_quality(apply_fn, history.final_params, train, test)

  fseed = args.seed if args.forget_seed is None else args.forget_seed
  n = len(train)
  forget = ul.random_forget_set(n, args.ratio, fseed)
  r = len(forget)
  devices = min(args.devices or jax.device_count(), jax.device_count())
  mesh = sharding.data_mesh(devices)
  kwargs = _method_kwargs(args)
  kwargs["mini_unlearning"]["mesh"] = mesh
  unlearners = {m: ul.get(m, **kwargs.get(m, {})) for m in methods
                if m != "retrain"}
  shadows = None
  if args.lira_shadows:
    shadows = _shadows(args, mia, apply_fn, train, recipe, workdir, progress)

  print(f"unlearning {r} of {n} examples ({args.ratio:.0%}) with "
        f"{', '.join(methods)}; reference: retrain ({args.epochs} epochs); "
        f"{devices} device(s)")
  results = evaluation.evaluate_unlearning(
      model, history, forget, train, test, unlearners, shadows=shadows,
      warmup=args.warmup, seed=args.seed,
      on_method=(lambda m: print(f"  running {m} ...")) if progress else None)

  rows = [{"model": name, **res.metrics} for name, res in results.items()]
  roc_path = mia.save_roc_png(
      {name: res.roc["loss"] for name, res in results.items()},
      os.path.join(workdir, "roc_forget.png"),
      title=f"loss attack: forget set vs test ({args.ratio:.0%} forgotten)")
  config = {k: v for k, v in vars(args).items() if k != "func"}
  primary = methods[0]
  summary = {
      "method": primary, "methods": ", ".join(results), "ratio": args.ratio,
      "forget_size": r, "devices": devices, **quality,
      **{f"{primary}/{k}": v for k, v in results[primary].metrics.items()},
      **{f"retrain/{k}": v for k, v in results["retrain"].metrics.items()},
  }
  report.write_json(os.path.join(workdir, "metrics.json"), {
      **summary,
      "models": {name: res.metrics for name, res in results.items()},
      "history": {"cache_stride": history.cache_stride,
                  "megabytes": history.nbytes / 2**20,
                  "steps": history.num_steps},
      "config": config,
  })
  columns = ["model", "test_accuracy", "forget_accuracy",
             "distance_to_retrain", "wall_time_s", "run_time_s",
             "speedup_vs_retrain", "speedup_end_to_end", "mia_loss_auc",
             "mia_mentr_auc", "mia_efficacy"]
  if shadows is not None:
    columns.append("mia_lira_auc")
  report.write_report(
      workdir, f"jaxleak unlearn: {args.model} on {args.dataset}, "
               f"{args.ratio:.0%} forgotten",
      summary={k: v for k, v in summary.items() if "/" not in k},
      tables={"Models (original = before unlearning)": [
          {c: row.get(c, "") for c in columns} for row in rows]},
      figures={"Forget-set loss attack (log-log ROC)": roc_path},
      config=config,
      notes=(SPEEDUP_DEFINITIONS + " "
             "mini_unlearning is a contraction-mapping design reconstructed "
             "from the paper's abstract, not the paper's verified rule. "
             "MIA rows attack the forget set (members of the original model) "
             "against test data; a retrained model scores ~0.5 AUC."))
  for row in rows:
    print(f"  {row['model']:16s} test acc {row['test_accuracy']:.4f}  forget acc "
          f"{row['forget_accuracy']:.4f}  ||w - w_retrain|| "
          f"{row['distance_to_retrain']:.4f}  time {row['wall_time_s']:.2f} s"
          f"{_speedups(row)}  MIA AUC "
          f"{row.get('mia_loss_auc', float('nan')):.3f}")
  print(SPEEDUP_DEFINITIONS)
  print(f"wrote {workdir}/metrics.json, report.md, roc_forget.png")
  return 0


SPEEDUP_DEFINITIONS = (
    "speedup_vs_retrain = retrain's run_time_s / the method's run_time_s, "
    "compilation excluded (run_time_s = wall_time_s - compile_time_s: what "
    "a deployed unlearner pays per request); speedup_end_to_end = retrain's "
    "wall_time_s / the method's wall_time_s, compilation included (what "
    "this one run cost).")


def _speedups(row: dict) -> str:
  if row["model"] in ("original", "retrain"):
    return ""
  return (f" (x{row['speedup_vs_retrain']:.2f} vs retrain without "
          f"compilation, x{row['speedup_end_to_end']:.2f} with)")


def _check_quality(apply_fn, params, train, test) -> dict:
  """Prints the original model's accuracy next to a linear probe's; warns."""
  from jaxleak import training  # pylint: disable=g-import-not-at-top
  from jaxleak.metrics import reference  # pylint: disable=g-import-not-at-top
  acc = float(training.evaluate(apply_fn, params, test)["accuracy"])
  probe = reference.linear_probe_accuracy(train, test)
  print(f"original model: test accuracy {acc:.4f} (a linear classifier on "
        f"the raw pixels: {probe:.4f})")
  shortfall = reference.accuracy_shortfall(acc, probe)
  if shortfall:
    _common.warn(shortfall)
  return {"original_test_accuracy": acc, "linear_probe_accuracy": probe}


def _load_or_train(args, ul, apply_fn, params0, train, recipe, workdir,
                   progress):
  """Reuses a finished history in `workdir` when it matches, else trains."""
  import json  # pylint: disable=g-import-not-at-top

  from jaxleak import checkpoint  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  different = ValueError(
      f"unlearn: --workdir {workdir!r} holds the history of a different "
      "model, data or recipe; use a new --workdir, or delete this one to "
      "start over")
  record_path = os.path.join(workdir, MODEL_RECORD)
  stored = None
  if os.path.isfile(record_path):
    try:
      with open(record_path) as f:
        stored = json.load(f)
    except (OSError, ValueError):
      stored = None  # unreadable: the history's own fingerprint decides
  # The model record first: another model's parameters do not even fit the
  # stored pytree, and that is a different run, not a damaged one.
  if stored is not None and stored != report.to_jsonable(model_record(args)):
    raise different
  try:
    history = ul.load_history(workdir, params_like=params0)
  except FileNotFoundError:
    history = None
  except checkpoint.CorruptCheckpointError as e:
    history_dir = os.path.join(workdir, "history")
    raise checkpoint.CorruptCheckpointError(
        f"unlearn: the training history in {history_dir} is damaged ({e}); "
        f"delete {history_dir} to train it again") from None
  if history is not None:
    same = (history.recipe == recipe and history.fingerprint["init_checksum"]
            == checkpoint.tree_checksum(params0)
            and history.num_examples == len(train)
            and stored == report.to_jsonable(model_record(args)))
    if not same:
      raise different
    print(f"reusing the trained model and history in {workdir}")
    return history
  budget = int(args.max_history_mb * 2**20)
  report.write_json(record_path, model_record(args))
  try:
    return ul.train_with_history(
        apply_fn, params0, train, recipe, snapshots=args.snapshots,
        cache_steps=not args.no_step_cache, max_history_bytes=budget,
        on_budget=args.on_budget, workdir=workdir, progress=progress)
  except ValueError as e:
    need = re.search(r"needs ([0-9.]+ MiB)", str(e))
    if "max_history_bytes" not in str(e) or need is None:
      raise
    # The library names its own arguments; say it with this command's flags.
    raise ValueError(
        f"argument --max-history-mb: the training history needs "
        f"{need.group(1)} but --max-history-mb is {args.max_history_mb:g}; "
        "raise it, pass --on-budget stride (cache every s-th step), or "
        "--no-step-cache (no DeltaGrad)") from None


def _shadows(args, mia, apply_fn, train, recipe, workdir, progress):
  """Shadow models on random halves of D (same recipe), cached in workdir."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from jaxleak import checkpoint  # pylint: disable=g-import-not-at-top
  from jaxleak.unlearning import evaluation  # pylint: disable=g-import-not-at-top

  s = args.lira_shadows
  in_masks = mia.shadow_in_masks(len(train), s, seed=args.seed + 1)
  inits = mia.stack_params([create_model(args, train, jax.random.key(1000 + k))[1]
                            for k in range(s)])
  ident = {"recipe": recipe.to_json(), "shadows": s, "model": args.model,
           "dataset": args.dataset}
  with checkpoint.Checkpointer(os.path.join(workdir, "shadows")) as ckpt:
    found = ckpt.restore_latest({"params": inits})
    if found is not None and found[1].get("identity") == ident:
      return evaluation.Shadows(found[0]["params"], in_masks)
    steps = -(-int(in_masks[0].sum()) // recipe.batch_size)
    lrs = jnp.asarray(recipe.learning_rates)
    schedule = lambda count: lrs[jnp.minimum(count // steps, lrs.size - 1)]
    opt = optax.chain(optax.add_decayed_weights(recipe.l2), optax.sgd(schedule))
    params = mia.train_shadow_models(
        apply_fn, inits, train.images, train.labels, in_masks, opt,
        epochs=recipe.epochs, batch_size=recipe.batch_size, seed=args.seed,
        progress=progress)
    ckpt.save(0, {"params": params}, {"identity": ident})
  return evaluation.Shadows(params, in_masks)
