"""`jaxleak i2f`: audit images with the inversion influence function (I²F).

Example::

  jaxleak i2f --model lenet --dataset mnist_subset --noise-var 1e-3 --n 50 \\
      --workdir runs/i2f

One victim model (from --seed and --init) and N images (stratified over the
classes) are audited against Gaussian gradient noise ``N(0, var I)``: for each
image, one noise draw ``delta`` is added to its gradient, I²F predicts the
attacker's reconstruction error ``||(J J^T + eps I)^{-1} J delta||`` (also as
a per-pixel RMSE), and ``sqrt(E[I^2])`` gives the noise-free expectation
(Hutchinson). Unless ``--attack none``, the L2 gradient-matching attack (or
Inverting Gradients) is run on the same noisy gradient to check the
prediction. The workdir receives ``risk.csv`` (one row per image, ranked from
least to most protected), ``scatter.png`` (prediction vs attack RMSE, or
sampled vs expected I²F without an attack), ``ranked_grid.png`` (the least
and most protected images, with reconstructions when attacked),
``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import csv
import os

from jaxleak.cli import _common

ATTACKS = {"l2": "idlg", "ig": "inverting_gradients", "none": None}


def register(subparsers) -> None:
  p = subparsers.add_parser(
      "i2f", help="per-image privacy risk under gradient noise with I²F "
                  "(inversion influence function)",
      description="Predict, per image, how far a gradient-inversion attack's "
                  "reconstruction is pushed by Gaussian gradient noise "
                  "(I²F), optionally check it against a real attack, and "
                  "rank the images from least to most protected.")
  _common.add_model_args(p, default="lenet")
  _common.add_data_args(p)
  p.add_argument("--split", default="test", help="dataset split to audit")
  p.add_argument("--n", type=_common.at_least(3, int), default=50,
                 help="images to audit (correlations need 3)")
  p.add_argument("--noise-var", type=_common.positive_float, default=1e-3,
                 help="variance of the Gaussian gradient noise")
  p.add_argument("--eps", type=_common.positive_float, default=1e-3,
                 help="I²F damping (J J^T + eps I). Default 1e-3, not the "
                      "library's 1: the sigmoid LeNet's J J^T has "
                      "eigenvalues down to ~1e-4, and eps = 1 damps them so "
                      "much that images are ranked the wrong way round "
                      "(experiments/influence/README.md)")
  p.add_argument("--probes", type=_common.nonnegative_int, default=4,
                 help="Hutchinson probes for sqrt(E[I^2]) (0: skip)")
  p.add_argument("--attack", default="l2", choices=tuple(ATTACKS),
                 help="attack run on the same noisy gradient to check the "
                      "prediction: l2 (iDLG objective, known label, L-BFGS), "
                      "ig (Inverting Gradients) or none")
  p.add_argument("--attack-steps", type=_common.positive_int, default=300,
                 help="attack iterations per image")
  p.add_argument("--fast-compile", action="store_true",
                 help="compile the attack with XLA optimisations off "
                      "(quicker start, slower steps: for short runs)")
  p.add_argument("--show", type=_common.positive_int, default=8,
                 help="images per row of the ranked grid")
  _common.add_run_args(p, workdir="runs/i2f-<model>-<dataset>")
  p.set_defaults(func=run, resumable=False)  # keeps no checkpoints


def run(args) -> int:
  _common.check_model_name(args)
  workdir = _common.default_workdir("i2f", args)
  from jaxleak import runloop  # pylint: disable=g-import-not-at-top
  # Unusable folders fail here, in one line, before any data loads.
  with runloop.workdir_guard(workdir):
    return _i2f(args, workdir)


def _i2f(args, workdir: str) -> int:
  """`run` once the arguments and the workdir are checked."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import dataclasses  # pylint: disable=g-import-not-at-top
  import math  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  # pylint: disable=g-import-not-at-top
  from jaxleak import data
  from jaxleak import metrics as metrics_lib
  from jaxleak import models
  from jaxleak import report
  from jaxleak.attacks import inversion
  from jaxleak.influence import audit
  # pylint: enable=g-import-not-at-top

  ds = data.load(args.dataset, args.split, args.data_dir,
                 resolution=args.resolution)
  indices = audit.stratified_indices(ds.labels, args.n, args.seed)
  apply_fn, params = models.create(args.model, ds.num_classes, ds.image_shape,
                                   jax.random.key(args.seed), init=args.init)
  std = math.sqrt(args.noise_var)
  d_x = int(np.prod(ds.image_shape))
  print(f"I²F audit of {args.n} {args.dataset}/{args.split} images, "
        f"{args.model} ({args.init} init), noise var {args.noise_var:g}, "
        f"eps {args.eps:g}, attack {args.attack}; workdir {workdir}",
        flush=True)
  bar = None
  if not args.no_progress:
    from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(total=args.n, unit="image", desc="i2f",
                    dynamic_ncols=True)
  rows, recs = [], []
  t_pred = t_attack = 0.0
  attack = ATTACKS[args.attack]
  for pos, idx in enumerate(indices):
    idx = int(idx)
    x = np.asarray(ds.images[idx:idx + 1], np.float32)
    y = np.asarray(ds.labels[idx:idx + 1], np.int32)
    key = jax.random.fold_in(jax.random.key(args.seed), pos)
    delta = audit.gaussian_perturbation(params, std, key)
    t0 = time.perf_counter()
    pred = audit.predict(apply_fn, params, x, y, delta,
                         eps_values=(args.eps,),
                         noise_std=std if args.probes else None, key=pos,
                         num_probes=max(args.probes, 1))
    t_pred += time.perf_counter() - t0
    row = {"index": idx, "label": int(y[0]),
           "i2f": pred["i2f"],
           "predicted_rmse": pred["i2f"] / math.sqrt(d_x),
           "expected_rmse": (pred["i2f_expected"] / math.sqrt(d_x)
                             if "i2f_expected" in pred else float("nan")),
           "lower_bound": pred["lower_bound"],
           "lambda_max": pred["lambda_max"],
           "jdelta_norm": pred["jdelta_norm"]}
    rec = None
    if attack is not None:
      obs = inversion.observe(apply_fn, params, x, y, key=0, defence=None)
      obs = dataclasses.replace(
          obs, gradient=jax.tree.map(lambda g, d: g + d, obs.gradient, delta),
          defence={"name": "gaussian", "var": args.noise_var})
      kwargs = {"steps": args.attack_steps, "label_strategy": "known"}
      t0 = time.perf_counter()
      with (inversion.compiler_options(inversion.FAST_COMPILE)
            if args.fast_compile else contextlib.nullcontext()):
        res = inversion.run_attack(attack, obs, key=args.seed * 100003 + pos,
                                   ground_truth=(x, y), **kwargs)
      t_attack += time.perf_counter() - t0
      row["attack_rmse"] = math.sqrt(res.metrics["mse"])
      row["attack_psnr"] = res.metrics["psnr"]
      rec = res.images[0]
    rows.append(row)
    recs.append(rec)
    if bar is not None:
      bar.update(1)
      bar.set_postfix(i2f_rmse=f"{row['predicted_rmse']:.3g}")
  if bar is not None:
    bar.close()

  # Rank: least protected (smallest predicted error) first.
  order = np.argsort([r["predicted_rmse"] for r in rows], kind="stable")
  ranked = []
  for rank, i in enumerate(order):
    ranked.append({"rank": rank + 1, **rows[i]})
  csv_path = os.path.join(workdir, "risk.csv")
  with open(csv_path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(ranked[0].keys()))
    w.writeheader()
    w.writerows(ranked)

  pred_rmse = np.asarray([r["predicted_rmse"] for r in rows])
  summary = {"images": args.n, "noise_var": args.noise_var, "eps": args.eps,
             "predicted_rmse_median": float(np.median(pred_rmse)),
             "predict_time_s_total": t_pred}
  if attack is not None:
    act = np.asarray([r["attack_rmse"] for r in rows])
    corr = audit.correlation(pred_rmse, act)
    summary.update({"attack": args.attack, "attack_steps": args.attack_steps,
                    "pearson": corr["pearson"], "spearman": corr["spearman"],
                    "attack_time_s_total": t_attack})
    audit.save_scatter(
        {f"{args.attack} attack vs I²F": (pred_rmse, act, None)},
        os.path.join(workdir, "scatter.png"), log=False,
        title=f"noise var {args.noise_var:g}, {args.n} images")
  else:
    exp = np.asarray([r["expected_rmse"] for r in rows])
    audit.save_scatter(
        {"sampled vs expected I²F": (exp, pred_rmse, None)},
        os.path.join(workdir, "scatter.png"), log=False,
        xlabel="sqrt(E[I²]) / sqrt(d_x)", ylabel="I²F (one draw) / sqrt(d_x)")

  k = min(args.show, args.n // 2)
  least, most = list(order[:k]), list(order[::-1][:k])
  images, titles, labels = [], [], []
  for name, sel in (("least protected", least), ("most protected", most)):
    images += [ds.images[rows[i]["index"]] for i in sel]
    titles += [f"{rows[i]['predicted_rmse']:.2g}" for i in sel]
    labels.append(name)
    if attack is not None:
      images += [recs[i] for i in sel]
      titles += [f"{rows[i]['attack_rmse']:.2g}" for i in sel]
      labels.append("reconstruction")
  metrics_lib.save_image_grid(np.stack(images),
                              os.path.join(workdir, "ranked_grid.png"),
                              nrow=k, titles=titles, row_labels=labels)
  report.write_json(os.path.join(workdir, "metrics.json"),
                    {"summary": summary, "images": ranked})
  notes = ("Rows are ranked by the predicted RMSE I²F/sqrt(d_x) (rank 1 = "
           "least protected: the attacker's reconstruction moves least under "
           "the noise). Grid titles: predicted RMSE for images, attack RMSE "
           "for reconstructions.")
  report.write_report(
      workdir, "I²F audit",
      summary={k_: (f"{v:.4g}" if isinstance(v, float) else v)
               for k_, v in summary.items()},
      tables={"Least protected": ranked[:k], "Most protected": ranked[-k:]},
      figures={"Prediction vs attack" if attack else "Sampled vs expected":
               "scatter.png", "Ranked images": "ranked_grid.png"},
      notes=notes, config=vars(args) | {"func": None})
  line = (f"median predicted RMSE {summary['predicted_rmse_median']:.3g}")
  if attack is not None:
    line += (f"; Pearson {summary['pearson']:.3f}, Spearman "
             f"{summary['spearman']:.3f} against the {args.attack} attack")
  print(line)
  print(f"wrote {csv_path}, scatter.png, ranked_grid.png, metrics.json, "
        "report.md")
  return 0
