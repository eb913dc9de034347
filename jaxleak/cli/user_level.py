"""`jaxleak attack --users N`: user-level inversion, one representative per user.

The set-up of Li et al. (arXiv 2409.07291) on a shipped dataset:

* the dataset's train split is cut, per class, into a *user pool* (5/8) and
  a *judge pool* (3/8); users are disjoint batches drawn from the user pool
  by `data.partition_users` (``--user-mode label`` or ``dominant``);
* the victim (``--model``, cnn_mnist by default) is trained on the test
  split, and the judge, an MLP (a different architecture, so its features
  are not the victim's), on the judge pool plus the test split: both are
  disjoint from every user. Both are cached (and resumed) in
  ``<workdir>/victim`` and ``<workdir>/judge``;
* each user shares the gradient of its whole batch (optionally DP-clipped
  and noised, ``--defence dp_clip``); the attack returns its representative
  image(s); the judge scores them with `user_metrics.score_users`.

`prepare`, `make_users` and `observe_user` are reused by
``experiments/user_level``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

USER_MODES = ("label", "dominant")
POOL_SHARE = 5 / 8


@dataclasses.dataclass(frozen=True)
class Setup:
  """Victim, judge and the user pool of one dataset."""

  victim_apply: Any
  victim_params: Any
  victim_accuracy: float
  judge_apply: Any
  judge_params: Any
  judge_accuracy: float
  pool: Any
  judge_train_size: int


def split_pool(train: Any, seed: int) -> tuple[Any, Any]:
  """Per class: the first 5/8 of a seeded permutation to users, the rest out."""
  rng = np.random.default_rng(seed)
  pool, rest = [], []
  for c in np.unique(train.labels):
    idx = rng.permutation(np.flatnonzero(train.labels == c))
    cut = round(POOL_SHARE * idx.size)
    pool.append(idx[:cut])
    rest.append(idx[cut:])
  return (train.subset(np.sort(np.concatenate(pool))),
          train.subset(np.sort(np.concatenate(rest))))


def _train(name: str, apply_fn: Any, params: Any, train: Any, test: Any,
           epochs: int, seed: int, workdir: str, progress: bool):
  from jaxleak import training  # pylint: disable=g-import-not-at-top
  config = training.TrainConfig(epochs=epochs, batch_size=64,
                                learning_rate=2e-3, seed=seed,
                                checkpoint_every=1000)
  res = training.train_classifier(
      apply_fn, params, train, test, config, workdir=workdir,
      progress=progress, run_info={"role": name, "dataset": train.name})
  return res.params, float(res.test_accuracy)


def prepare(dataset: str, *, workdir: str, victim_model: str = "cnn_mnist",
            seed: int = 0, data_dir: str | None = None,
            victim_epochs: int = 15, judge_epochs: int = 15,
            judge_model: str = "mlp", judge_options: dict | None = None,
            progress: bool = True) -> Setup:
  """Loads the data and trains (or restores) the victim and the judge.

  The judge is ``models.create(judge_model, ..., **judge_options)``; by
  default an MLP with 256 sigmoid units, cached in ``<workdir>/judge``.
  Another judge is cached in ``<workdir>/judge_<judge_model>_<options>``,
  so judges of different architectures share one victim.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  train = data.load(dataset, "train", data_dir)
  test = data.load(dataset, "test", data_dir)
  if train.num_classes < 2:
    raise ValueError(f"argument --dataset {dataset!r} has "
                     f"{train.num_classes} class(es); user-level attributes "
                     "need at least 2")
  pool, held_out = split_pool(train, seed)
  judge_train = data.Dataset(
      images=np.concatenate([held_out.images, test.images]),
      labels=np.concatenate([held_out.labels, test.labels]),
      class_names=train.class_names, name=f"{dataset}/judge")
  v_apply, v_params = models.create(victim_model, train.num_classes,
                                    train.image_shape, jax.random.key(seed))
  v_params, _ = _train("victim", v_apply, v_params, test, pool,
                       victim_epochs, seed, os.path.join(workdir, "victim"),
                       progress)
  if judge_options is None and judge_model == "mlp":
    judge_options, judge_dir = {"hidden": (256,)}, "judge"
  else:
    judge_options = dict(judge_options or {})
    judge_dir = "_".join(["judge", judge_model] + [
        f"{k}-{'x'.join(map(str, np.atleast_1d(v)))}"
        for k, v in sorted(judge_options.items())])
  j_apply, j_params = models.create(judge_model, train.num_classes,
                                    train.image_shape,
                                    jax.random.key(seed + 1), **judge_options)
  j_params, _ = _train("judge", j_apply, j_params, judge_train, pool,
                       judge_epochs, seed + 1, os.path.join(workdir, judge_dir),
                       progress)
  from jaxleak import training  # pylint: disable=g-import-not-at-top
  v_acc = training.evaluate(v_apply, v_params, pool)["accuracy"]
  j_acc = training.evaluate(j_apply, j_params, pool)["accuracy"]
  return Setup(v_apply, v_params, v_acc, j_apply, j_params, j_acc, pool,
               len(judge_train))


def make_users(pool: Any, users: int, batch_size: int, mode: str,
               share: float, seed: int) -> list[Any]:
  from jaxleak import data  # pylint: disable=g-import-not-at-top
  return data.partition_users(pool, users, mode, batch_size=batch_size,
                              share=share, seed=seed)


def attribute(user: Any) -> int:
  """A user's private attribute: the majority label of its batch."""
  return int(np.argmax(np.bincount(np.asarray(user.labels))))


def observe_user(setup: Setup, user: Any, *, key: int, defence: Any = None,
                 reveal_labels: bool = False):
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  return inversion.observe(setup.victim_apply, setup.victim_params,
                           user.images, user.labels, key=key,
                           defence=defence, reveal_labels=reveal_labels)


def save_user_figure(batch: np.ndarray, reps: np.ndarray, path: str, *,
                     title: str) -> str:
  """The user's batch (a grid) with its representative(s) at the right."""
  import math  # pylint: disable=g-import-not-at-top

  from jaxleak.metrics import figures  # pylint: disable=g-import-not-at-top

  b = batch.shape[0]
  ncol = min(10, b)
  nrow = math.ceil(b / ncol)
  h, w, c = batch.shape[1:]
  grid = np.ones((nrow * (h + 1) - 1, ncol * (w + 1) - 1, c), np.float32)
  for i in range(b):
    r, q = divmod(i, ncol)
    grid[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = batch[i]
  k = reps.shape[0]
  fig = figures.new_figure((ncol * 0.45 + 1.6 * k + 0.4,
                            max(nrow * 0.45, 1.6) + 0.5), 120)
  axes = fig.subplots(1, 1 + k, squeeze=False,
                      gridspec_kw={"width_ratios": [ncol * 0.45] + [1.6] * k})
  cmap = "gray" if c == 1 else None
  show = (lambda a: a[..., 0]) if c == 1 else (lambda a: a)
  axes[0, 0].imshow(show(np.clip(grid, 0, 1)), cmap=cmap, vmin=0, vmax=1,
                    interpolation="nearest")
  axes[0, 0].set_title(f"user batch (B={b})", fontsize=8)
  for j in range(k):
    axes[0, 1 + j].imshow(show(reps[j]), cmap=cmap, vmin=0, vmax=1,
                          interpolation="nearest")
    axes[0, 1 + j].set_title("representative" + (f" {j}" if k > 1 else ""),
                             fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title, fontsize=8)
  return figures.save_figure(fig, path, 120, tight=True)


def run(args, attack_fn, kwargs: dict, defence: tuple[str, dict]) -> int:
  """The CLI's user-level path (see the module docstring)."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  from jaxleak import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks.inversion import user_metrics  # pylint: disable=g-import-not-at-top
  from jaxleak.cli import _common  # pylint: disable=g-import-not-at-top

  if args.user_mode not in USER_MODES:
    raise ValueError(f"argument --user-mode must be one of {USER_MODES}, "
                     f"got {args.user_mode!r}")
  if args.users < 2:
    raise ValueError(f"argument --users must be >= 2 (identification needs "
                     f"other users), got {args.users}")
  if args.batch_size < 1:
    raise ValueError(f"argument --batch-size must be >= 1, got "
                     f"{args.batch_size}")
  if args.train_epochs < 1:
    raise ValueError(f"argument --train-epochs must be >= 1, got "
                     f"{args.train_epochs}")
  if not 0 < args.share <= 1:
    raise ValueError(f"argument --share must be in (0, 1], got {args.share}")
  if args.resolution is not None:
    raise ValueError("argument --resolution is not supported with --users "
                     "(the victim and judge use the dataset's native size)")
  from jaxleak import data  # pylint: disable=g-import-not-at-top
  # Check the user partition before any training (errors name the flags).
  pool, _ = split_pool(data.load(args.dataset, "train", args.data_dir),
                       args.seed)
  try:
    make_users(pool, args.users, args.batch_size, args.user_mode,
               args.share, args.seed)
  except (ValueError, TypeError) as e:
    raise ValueError(str(e).replace("argument 'batch_size'", "--batch-size")
                     .replace("argument 'users'", "--users")
                     .replace("argument 'share'", "--share")) from None
  workdir = _common.default_workdir(f"attack-{args.attack}", args)
  os.makedirs(workdir, exist_ok=True)  # checked by `attack`'s workdir guard
  t0 = time.perf_counter()
  print(f"{args.attack}: {args.users} {args.user_mode} users of "
        f"{args.batch_size} images from {args.dataset}, victim {args.model}; "
        f"workdir {workdir}", flush=True)
  setup = prepare(args.dataset, workdir=workdir, victim_model=args.model,
                  seed=args.seed, data_dir=args.data_dir,
                  victim_epochs=args.train_epochs,
                  judge_epochs=args.train_epochs,
                  progress=not args.no_progress)
  print(f"victim accuracy on the user pool {setup.victim_accuracy:.3f}, "
        f"judge {setup.judge_accuracy:.3f}", flush=True)
  users = make_users(setup.pool, args.users, args.batch_size, args.user_mode,
                     args.share, args.seed)
  defence_obj = inversion.make_defence(defence[0], **defence[1])
  pbar = None
  if not args.no_progress:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    pbar = tqdm.tqdm(total=len(users), unit="user", desc=args.attack,
                     dynamic_ncols=True)
  reps, rows, results = [], [], []
  compile_ctx = lambda: (inversion.compiler_options(inversion.FAST_COMPILE)
                         if args.fast_compile else contextlib.nullcontext())
  for i, user in enumerate(users):
    obs = observe_user(setup, user, key=args.seed * 1000 + i,
                       defence=defence_obj,
                       reveal_labels=not args.hide_labels)
    with compile_ctx():
      res = attack_fn(obs, key=args.seed * 100003 + i,
                      ground_truth=(user.images, user.labels), **kwargs)
    results.append(res)
    reps.append(res.images)
    rows.append({"user": i, "attribute": attribute(user),
                 "majority_label": int(res.labels[0]),
                 "final_loss": res.final_loss,
                 "wall_time_s": round(res.wall_time_s, 2)})
    save_user_figure(np.asarray(user.images), res.images,
                     os.path.join(workdir, "users", f"user{i:02d}.png"),
                     title=f"user {i}: attribute {attribute(user)}, "
                           f"recovered label {int(res.labels[0])}")
    if pbar is not None:
      pbar.update(1)
      pbar.set_postfix(loss=f"{res.final_loss:.3f}")
  if pbar is not None:
    pbar.close()
  attributes = [attribute(u) for u in users]
  scores = user_metrics.score_users(
      setup.judge_apply, setup.judge_params, reps,
      [np.asarray(u.images) for u in users], attributes)
  for row, pred, sim in zip(rows, scores["predicted"],
                            scores["per_user_similarity"]):
    row.update(judged=pred, similarity=round(sim, 4))
  label_acc = float(np.mean([r["majority_label"] == r["attribute"]
                             for r in rows]))
  summary = {
      "attack": args.attack, "users": len(users),
      "batch_size": args.batch_size, "user_mode": args.user_mode,
      "attribute_accuracy": scores["attribute_accuracy"],
      "representative_similarity": scores["representative_similarity"],
      "identification_rate": scores["identification_rate"],
      **dict(scores["batch_pairwise_similarity"].items()),
      "majority_label_accuracy": label_acc,
      "victim_accuracy": setup.victim_accuracy,
      "judge_accuracy": setup.judge_accuracy,
      "seconds_per_user": float(np.mean([r.wall_time_s for r in results])),
      "total_time_s": time.perf_counter() - t0}
  k = reps[0].shape[0]
  cells = np.concatenate([np.concatenate([r[:1] for r in reps]),
                          np.stack([np.asarray(u.images[0]) for u in users]),
                          np.stack([np.asarray(u.images[1]) for u in users])])
  overview = metrics_lib.save_image_grid(
      cells, os.path.join(workdir, "representatives.png"), nrow=len(users),
      titles=[f"u{i} y{a}" for i, a in enumerate(attributes)]
      + [""] * (2 * len(users)),
      row_labels=["representative", "batch image", "batch image"])
  curves = {f"user {i}": (np.arange(1, len(r.loss_history) + 1),
                          r.loss_history) for i, r in enumerate(results[:10])}
  curve = metrics_lib.save_curves(
      curves, os.path.join(workdir, "loss_curve.png"), xlabel="iteration",
      ylabel="gradient distance", title=f"{args.attack}")
  config = {k2: v for k2, v in vars(args).items() if k2 != "func"}
  report.write_json(os.path.join(workdir, "metrics.json"), {
      "summary": summary, "users": rows,
      "scores": scores, "hyperparams": dict(results[0].hyperparams),
      "config": config})
  figures = {"Representatives (top row) and two images of each user's "
             "batch": overview, "Attack objective": curve}
  figures.update({f"User {i}: batch and representative": os.path.join(
      "users", f"user{i:02d}.png") for i in range(min(len(users), 4))})
  report.write_report(
      workdir, f"jaxleak attack: {args.attack}, {len(users)} "
      f"{args.user_mode} users of {args.batch_size} from {args.dataset}",
      summary=summary, tables={"Users": rows}, figures=figures,
      config={"hyperparams": dict(results[0].hyperparams), **config},
      notes="attribute_accuracy: share of users whose majority label the "
            "judge (an MLP trained on data disjoint from the users) predicts "
            "from the representative; representative_similarity: mean cosine "
            "similarity of the judge's penultimate features between the "
            "representative and each batch image, next to the batch's own "
            "pairwise range (batch_pairwise_*); identification_rate: share "
            "of users whose representative is most similar to their own "
            f"batch. k = {k} representative(s) per user. Per-user figures: "
            "users/userNN.png.")
  print(f"attribute accuracy {summary['attribute_accuracy']:.3f}, "
        f"representative similarity {summary['representative_similarity']:.3f}"
        f" (batch pairwise mean {summary['batch_pairwise_mean']:.3f}), "
        f"identification rate {summary['identification_rate']:.3f}; wrote "
        f"{workdir}/metrics.json, report.md, representatives.png, users/",
        flush=True)
  return 0
