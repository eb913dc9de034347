"""Runs the DP-PSASC comparison grid and writes tables and a plot.

Thin launcher: all logic is jaxleak's (`jaxleak.dp_training`). Results are
appended to `results.jsonl` as each run finishes, so an interrupted sweep
resumes by rerunning the same command. See configs/comparison.py.
"""

import os

from absl import flags
import numpy as np

from jaxleak import launch

_CONFIG, _WORKDIR = launch.define_config_flags(workdir_default="runs/dp_comparison")
_SUMMARISE_ONLY = flags.DEFINE_bool(
    "summarise_only", False,
    "rebuild the tables, plots and report from results.jsonl without training "
    "(e.g. while several processes share one workdir)")


def dataset_setting(cfg, ds_name, name):
  """``cfg.<name>``, or its override for `ds_name` in ``cfg.per_dataset``."""
  overrides = cfg.get("per_dataset", {}).get(ds_name, {})
  return overrides.get(name, cfg[name])


def method_grid(cfg, ds_name):
  """(method name, DPTrainConfig kwargs) for every method run on `ds_name`.

  Every method is crossed with the learning-rate multipliers `lr_factors` of
  its base setting; a factor other than 1 is appended to the name as
  ``"@lr x{factor}"``. `summarise` keeps, per method family, dataset and
  epsilon, the variant with the best mean accuracy.
  """
  m = cfg.momentum
  base = [(f"dp_sgd(C={c:g})", dict(rule="clip", l2_norm_clip=c,
                                    learning_rate=cfg.base_lr / c, momentum=None))
          for c in dataset_setting(cfg, ds_name, "dp_sgd_clips")]
  base += [
      ("dp_auto_s", dict(rule="auto_s", gamma=cfg.auto_s_gamma,
                         learning_rate=cfg.base_lr, momentum=None)),
      ("dp_psac", dict(rule="psac", r=cfg.psac_r, learning_rate=cfg.base_lr,
                       momentum=None)),
      ("dp_psasc", dict(rule="psasc", r=cfg.psasc_r, s=cfg.psasc_s,
                        learning_rate=cfg.base_lr, momentum=None)),
      ("dp_psasc+momentum", dict(rule="psasc", r=cfg.psasc_r, s=cfg.psasc_s,
                                 learning_rate=cfg.base_lr * (1 - m),
                                 momentum=m)),
  ]
  grid = []
  for factor in dataset_setting(cfg, ds_name, "lr_factors"):
    for name, kwargs in base:
      if factor != 1.0:
        name = f"{name}@lr x{factor:g}"
        kwargs = {**kwargs, "learning_rate": kwargs["learning_rate"] * factor}
      grid.append((name, kwargs))
  return grid


def method_family(method):
  """'dp_sgd(C=0.1)@lr x2' -> 'dp_sgd'; 'dp_psasc@lr x2' -> 'dp_psasc'."""
  return method.split("@")[0].split("(")[0]


def run_all(cfg, workdir):
  import jax  # pylint: disable=g-import-not-at-top
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import dp_training  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak import sharding  # pylint: disable=g-import-not-at-top
  from jaxleak.dp import accounting  # pylint: disable=g-import-not-at-top

  # Seeds of one (dataset, epsilon, method) compile to the same program.
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(workdir, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  path = os.path.join(workdir, "results.jsonl")
  done = {(r["dataset"], r["method"], r["epsilon"], r["seed"])
          for r in report.read_jsonl(path)}
  mesh = sharding.data_mesh(1)  # 2 CPU cores: sharding buys nothing here
  grids = {ds: method_grid(cfg, ds) for ds in cfg.datasets}
  keys = {(ds, method, float(eps), int(seed)) for ds in cfg.datasets
          for eps in cfg.epsilons for seed in cfg.seeds for method, _ in grids[ds]}
  bar = tqdm(total=len(keys), initial=len(keys & done), desc="dp comparison",
             unit="run")
  for ds_name in cfg.datasets:
    grid = grids[ds_name]
    train = data.load(ds_name, "train")
    test = data.load(ds_name, "test")
    b = cfg.expected_batch_size[ds_name]
    q = b / len(train)
    steps = max(1, round(cfg.epochs * len(train) / b))
    for eps in cfg.epsilons:
      sigma = None
      for seed in cfg.seeds:
        for method, kwargs in grid:
          key = (ds_name, method, float(eps), int(seed))
          if key in done:
            continue
          if sigma is None:
            sigma = accounting.calibrate_noise(
                eps, sample_rate=q, steps=steps, delta=cfg.delta,
                accountant=cfg.accountant)
          apply_fn, params = models.create(cfg.model, train.num_classes,
                                           train.image_shape,
                                           jax.random.key(seed))
          config = dp_training.DPTrainConfig(
              noise_multiplier=sigma, target_epsilon=None, delta=cfg.delta,
              epochs=cfg.epochs, expected_batch_size=b, seed=seed,
              accountant=cfg.accountant, path=cfg.path, **kwargs)
          res = dp_training.train_dp_classifier(
              apply_fn, params, train, test, config, mesh=mesh, progress=False,
              eval_every=steps)
          row = {"dataset": ds_name, "method": method, "epsilon": float(eps),
                 "seed": int(seed), "test_accuracy": res.test_accuracy,
                 "epsilon_spent": res.epsilon, "noise_multiplier": sigma,
                 "steps": res.steps, "wall_time_s": res.wall_time_s}
          report.append_jsonl(path, row)
          bar.update(1)
          bar.set_postfix(ds=ds_name, eps=eps, method=method,
                          acc=f"{res.test_accuracy:.3f}")
  bar.close()
  return report.read_jsonl(path)


def summarise(rows, cfg, workdir):
  from jaxleak import metrics  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  # Only the configured grid counts: rows of variants dropped from a dataset's
  # grid (kept in results.jsonl) must not win a best-of comparison unevenly.
  in_grid = {(ds, m) for ds in cfg.datasets for m, _ in method_grid(cfg, ds)}
  groups = {}
  for r in rows:
    if (r["dataset"], r["method"]) not in in_grid:
      continue
    groups.setdefault((r["dataset"], r["method"], r["epsilon"]), []).append(
        r["test_accuracy"])
  table, csv_lines = [], ["dataset,method,epsilon,mean,std,n"]
  best_of = {}  # (dataset, family, epsilon) -> mean accuracy of the best variant
  for ds in cfg.datasets:
    for eps in cfg.epsilons:
      # Each family keeps its best variant (DP-SGD: clipping bound and
      # learning rate; the others: learning rate) for this (dataset, epsilon).
      variants = {}
      for (d, method, e), _accs in groups.items():
        if d == ds and e == eps:
          variants.setdefault(method_family(method), []).append(method)
      for family in sorted(variants):
        best = max(variants[family], key=lambda m: np.mean(
            groups[(ds, m, eps)]))
        accs = groups[(ds, best, eps)]
        best_of[(ds, family, eps)] = 100 * np.mean(accs)
        setting = best[len(family):]
        if "@" not in setting:
          setting += "@lr x1"
        shown = family + (f" (best {setting})" if len(variants[family]) > 1
                          else setting)
        table.append({"dataset": ds, "epsilon": eps, "method": shown,
                      "accuracy": f"{100 * np.mean(accs):.2f} ± "
                                  f"{100 * np.std(accs):.2f}",
                      "seeds": len(accs), "variants": len(variants[family])})
      for (d, method, e), accs in sorted(groups.items()):
        if d == ds and e == eps:
          csv_lines.append(f"{ds},{method},{eps},{np.mean(accs):.4f},"
                           f"{np.std(accs):.4f},{len(accs)}")
  with open(os.path.join(workdir, "results.csv"), "w") as f:
    f.write("\n".join(csv_lines) + "\n")
  figures = {}
  for ds in cfg.datasets:
    # Curves: each family's best variant at each epsilon, as in the table.
    curves = {}
    for family in sorted({f for (d, f, _) in best_of if d == ds}):
      xs = sorted(e for (d, f, e) in best_of if d == ds and f == family)
      curves[family + " (best variant)"] = (
          xs, [best_of[(ds, family, e)] for e in xs])
    if not curves:
      continue  # no results for this dataset yet
    figures[f"Test accuracy vs epsilon ({ds})"] = metrics.save_curves(
        curves, os.path.join(workdir, f"accuracy_vs_epsilon_{ds}.png"),
        xlabel=f"epsilon (delta = {cfg.delta:g})", ylabel="test accuracy (%)",
        title=f"{cfg.model} on {ds}")
  md = report.markdown_table(table, ["dataset", "epsilon", "method", "accuracy",
                                     "seeds", "variants"])
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(md)
  report.write_report(workdir, "DP-PSASC comparison: test accuracy vs epsilon",
                      tables={"Test accuracy (%), mean ± std over seeds": table},
                      figures=figures, config=cfg.to_dict())
  print(md)


def main(argv):
  del argv
  cfg = _CONFIG.value
  workdir = launch.study_workdir(_WORKDIR.value)
  if _SUMMARISE_ONLY.value:
    from jaxleak import report  # pylint: disable=g-import-not-at-top
    rows = report.read_jsonl(os.path.join(workdir, "results.jsonl"))
    if not rows:
      raise SystemExit(f"--summarise_only: no results in {workdir}/results.jsonl")
  else:
    rows = run_all(cfg, workdir)
  summarise(rows, cfg, workdir)


if __name__ == "__main__":
  launch.run(main, required=("config",))
