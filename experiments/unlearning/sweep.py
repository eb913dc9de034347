"""Sweep unlearning methods over forget ratios and seeds; write a table.

  python experiments/unlearning/sweep.py \\
      --config experiments/unlearning/configs/cnn_mnist.py --workdir runs/sweep_cnn
  # fewer seeds / ratios / epochs: config overrides
  python experiments/unlearning/sweep.py \\
      --config experiments/unlearning/configs/logreg.py \\
      --config.seeds='(0,)' --config.ratios='(0.1, 0.3)' --workdir runs/sweep

For every seed the model is trained once with its unlearning history (stored
in ``<workdir>/seed<s>``, resumable); for every ratio a random forget set is
drawn and retraining plus every configured method are evaluated
(`jaxleak.unlearning.evaluation`). Each (seed, ratio) cell is saved as JSON
as soon as it finishes, so an interrupted sweep resumes where it stopped.
Outputs: ``results.csv`` (one row per seed, ratio and model),
``summary.csv`` and ``table.md`` (mean and std over seeds) and
``sweep.png`` (distance to retraining, forget-set MIA AUC and time against
the ratio).
"""

from __future__ import annotations

import csv
import json
import os
import time

from absl import flags

# jaxleak.launch imports neither jax nor numpy: --devices can still act.
from jaxleak import launch

COLUMNS = ("test_accuracy", "forget_accuracy", "distance_to_retrain",
           "run_time_s", "wall_time_s", "speedup_vs_retrain", "mia_loss_auc",
           "mia_loss_tpr_at_1pct_fpr", "mia_efficacy", "mia_lira_auc")

_CONFIG, _WORKDIR = launch.define_config_flags()
_DEVICES = flags.DEFINE_integer(
    "devices", None, "virtual CPU devices to create (before jax starts)")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "only aggregate the cells finished so far")


def main(argv) -> int:
  del argv
  cfg, workdir = _CONFIG.value, launch.study_workdir(_WORKDIR.value)
  report_only, devices = _REPORT_ONLY.value, _DEVICES.value
  if devices and devices > 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count="
                               f"{devices}").strip()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak import sharding  # pylint: disable=g-import-not-at-top
  from jaxleak import unlearning as ul  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import membership as mia  # pylint: disable=g-import-not-at-top
  from jaxleak.unlearning import evaluation  # pylint: disable=g-import-not-at-top

  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(cfg.to_dict(), f, indent=2, default=str)
  train = data.load(cfg.dataset, "train")
  test = data.load(cfg.dataset, "test")
  mesh = sharding.data_mesh(cfg.devices or None)
  model_kwargs = dict(cfg.model_kwargs)
  if "hidden" in model_kwargs:
    model_kwargs["hidden"] = tuple(model_kwargs["hidden"])

  def create(key):
    return models.create(cfg.model, train.num_classes, train.image_shape, key,
                         **model_kwargs)

  start = time.perf_counter()
  for seed in ([] if report_only else cfg.seeds):
    seed_dir = os.path.join(workdir, f"seed{seed}")
    apply_fn, params0 = create(jax.random.key(seed))
    recipe = ul.sgd_recipe(cfg.epochs, cfg.batch_size, cfg.learning_rate,
                           schedule=cfg.schedule, l2=cfg.l2, seed=seed)
    t0 = time.perf_counter()
    history = ul.train_with_history(apply_fn, params0, train, recipe,
                                    snapshots=cfg.snapshots, workdir=seed_dir,
                                    on_budget="stride")
    print(f"[seed {seed}] history ready ({history.nbytes / 2**20:.0f} MiB, "
          f"{time.perf_counter() - t0:.0f} s)", flush=True)
    model = ul.Model(apply_fn, history.final_params)
    shadows = None
    if cfg.lira_shadows:
      shadows = _shadows(cfg, seed, create, train, recipe, mia, optax, jax,
                         evaluation, apply_fn)
    methods = {}
    for name, kw in cfg.methods.items():
      kw = dict(kw)
      if name == "mini_unlearning":
        kw["mesh"] = mesh
      methods[name] = ul.get(name, **kw)
    for ratio in cfg.ratios:
      cell = os.path.join(seed_dir, f"ratio{ratio}.json")
      if os.path.exists(cell):
        continue
      forget = ul.random_forget_set(len(train), ratio, seed,
                                    stream=int(round(ratio * 1e4)))
      t0 = time.perf_counter()
      results = evaluation.evaluate_unlearning(
          model, history, forget, train, test, methods, shadows=shadows,
          warmup=cfg.warmup, repeats=cfg.get("repeats", 1), seed=seed)
      rows = [{"seed": seed, "ratio": ratio, "model": name, **res.metrics}
              for name, res in results.items()]
      report.write_json(cell, {"rows": rows})
      mini = results.get("mini_unlearning")
      msg = (f" mini: dist {mini.metrics['distance_to_retrain']:.3f} vs "
             f"orig {results['original'].metrics['distance_to_retrain']:.3f}"
             if mini else "")
      print(f"[seed {seed}] ratio {ratio}: {time.perf_counter() - t0:.0f} s;"
            f"{msg}", flush=True)
  rows = []
  for seed in cfg.seeds:
    for ratio in cfg.ratios:
      cell = os.path.join(workdir, f"seed{seed}", f"ratio{ratio}.json")
      if os.path.exists(cell):  # partial sweeps report what is finished
        with open(cell) as f:
          rows.extend(json.load(f)["rows"])
  write_tables(rows, workdir, cfg, np)
  print(f"sweep done in {time.perf_counter() - start:.0f} s; wrote "
        f"{workdir}/table.md, summary.csv, results.csv, sweep.png")
  return 0


def _shadows(cfg, seed, create, train, recipe, mia, optax, jax, evaluation,
             apply_fn):
  """Shadow models on random halves of D with the target's SGD recipe."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  s = cfg.lira_shadows
  in_masks = mia.shadow_in_masks(len(train), s, seed=1000 + seed)
  inits = mia.stack_params([create(jax.random.key(10_000 + 100 * seed + k))[1]
                            for k in range(s)])
  steps = -(-int(in_masks[0].sum()) // recipe.batch_size)
  lrs = jnp.asarray(recipe.learning_rates)
  schedule = lambda count: lrs[jnp.minimum(count // steps, lrs.size - 1)]
  opt = optax.chain(optax.add_decayed_weights(recipe.l2), optax.sgd(schedule))
  params = mia.train_shadow_models(apply_fn, inits, train.images, train.labels,
                                   in_masks, opt, epochs=recipe.epochs,
                                   batch_size=recipe.batch_size, seed=seed)
  return evaluation.Shadows(params, in_masks)


def write_tables(rows, out, cfg, np):
  """results.csv, summary.csv (mean/std over seeds), table.md, sweep.png."""
  keys = ["seed", "ratio", "model"] + [c for c in COLUMNS if c in rows[0]]
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  cols = [c for c in COLUMNS if c in rows[0]]
  models_order = ["original", "retrain"] + list(cfg.methods)
  summary = []
  for ratio in cfg.ratios:
    for m in models_order:
      sel = [r for r in rows if r["ratio"] == ratio and r["model"] == m]
      if not sel:
        continue
      entry = {"ratio": ratio, "model": m, "seeds": len(sel)}
      for c in cols:
        vals = np.array([float(r[c]) for r in sel], float)
        vals = vals[~np.isnan(vals)]  # e.g. the original model's speedup
        entry[c + "_mean"] = float(vals.mean()) if vals.size else float("nan")
        entry[c + "_std"] = float(vals.std()) if vals.size else float("nan")
      summary.append(entry)
  with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(summary[0]))
    w.writeheader()
    w.writerows(summary)
  shown = [c for c in ("test_accuracy", "forget_accuracy",
                       "distance_to_retrain", "run_time_s",
                       "speedup_vs_retrain", "mia_loss_auc", "mia_efficacy",
                       "mia_lira_auc") if c in cols]
  lines = [f"# Unlearning sweep: {cfg.name} ({cfg.model} on {cfg.dataset}, "
           f"{cfg.epochs} epochs, mean ± std over seeds)\n",
           "| ratio | model | seeds | " + " | ".join(shown) + " |",
           "|---|---|---|" + "---|" * len(shown)]
  for e in summary:
    cells = []
    for c in shown:
      mean, std = e[c + "_mean"], e[c + "_std"]
      fmt = ".2f" if c in ("run_time_s", "speedup_vs_retrain") else ".4f"
      cells.append("n/a" if np.isnan(mean) else f"{mean:{fmt}} ± {std:{fmt}}")
    lines.append(f"| {e['ratio']:g} | {e['model']} | {e['seeds']} | "
                 + " | ".join(cells) + " |")
  lines.append("")
  lines.append(acceptance(summary, cfg))
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plot(summary, out, cfg, models_order)


def acceptance(summary, cfg) -> str:
  """The study's targets for mini_unlearning at the largest ratio."""
  ratio = max(cfg.ratios)
  get = {e["model"]: e for e in summary if e["ratio"] == ratio}
  if "mini_unlearning" not in get:
    return ""
  mini, rt = get["mini_unlearning"], get["retrain"]
  lines = [f"## Targets for mini_unlearning at ratio {ratio:g}\n"]
  d_acc = abs(mini["test_accuracy_mean"] - rt["test_accuracy_mean"]) * 100
  lines.append(f"- test accuracy within 1 point of retrain: {d_acc:.2f} points "
               f"-> {'reached' if d_acc <= 1 else 'NOT reached'}")
  d_auc = abs(mini["mia_loss_auc_mean"] - rt["mia_loss_auc_mean"])
  lines.append(f"- forget-set MIA AUC within 0.05 of retrain's: "
               f"{mini['mia_loss_auc_mean']:.4f} vs {rt['mia_loss_auc_mean']:.4f}"
               f" -> {'reached' if d_auc <= 0.05 else 'NOT reached'}")
  for other in ("finetune", "deltagrad"):
    if other in get:
      a, b = mini["distance_to_retrain_mean"], get[other][
          "distance_to_retrain_mean"]
      lines.append(f"- distance to retrain smaller than {other}: {a:.4f} vs "
                   f"{b:.4f} -> {'reached' if a < b else 'NOT reached'}")
  sp = mini["speedup_vs_retrain_mean"]
  lines.append(f"- at least 5x faster than retraining (run time, compilation "
               f"excluded): {sp:.2f}x -> {'reached' if sp >= 5 else 'NOT reached'}")
  return "\n".join(lines) + "\n"


def plot(summary, out, cfg, models_order):
  from jaxleak.metrics import figures  # pylint: disable=g-import-not-at-top
  panels = [("distance_to_retrain", "||w - w_retrain||"),
            ("mia_loss_auc", "forget-set MIA AUC (loss)"),
            ("run_time_s", "run time (s)")]
  fig = figures.new_figure((15, 4), 100)
  axes = fig.subplots(1, 3)
  # One colour per method in every panel (the run-time panel skips one).
  colours = {m: f"C{i}" for i, m in enumerate(models_order)}
  for ax, (col, label) in zip(axes, panels):
    for m in models_order:
      es = [e for e in summary if e["model"] == m]
      if not es or (col == "run_time_s" and m == "original"):
        continue
      x = [e["ratio"] for e in es]
      ax.errorbar(x, [e[col + "_mean"] for e in es],
                  yerr=[e[col + "_std"] for e in es], marker="o", capsize=3,
                  label=m, color=colours[m])
    ax.set_xscale("log")
    ax.set_xlabel("forget ratio")
    ax.set_ylabel(label)
    if col in ("distance_to_retrain", "run_time_s"):
      ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=8)
  title = f"{cfg.model} on {cfg.dataset}"
  fig.suptitle(title if cfg.name == cfg.model else f"{cfg.name}: {title}")
  fig.tight_layout()
  figures.save_figure(fig, os.path.join(out, "sweep.png"), 100)


if __name__ == "__main__":
  launch.run(main)
