"""I²F validation study: predictions vs attack errors, correlations, scatter plots.

Thin launcher over `jaxleak.influence` and `jaxleak.attacks.inversion`.
Every (image, noise variance) pair is one record appended to
``results.jsonl`` as soon as it is done (I²F predictions and each attack's
RMSE/PSNR/SSIM/wall time), so an interrupted run resumes by rerunning the same
command, and a larger ``n_images`` extends a smaller run (the image choice is
prefix-stable). Then ``correlations.md``/``.json``, ``scatter.png`` and
``report.md`` are written.

  python experiments/influence/run_validation.py \\
      --config experiments/influence/configs/validation.py \\
      --workdir experiments/influence/results/validation
"""

import dataclasses
import os
import time

from absl import flags
import numpy as np

from jaxleak import launch

_CONFIG, _WORKDIR = launch.define_config_flags()
_SUMMARY_ONLY = flags.DEFINE_bool("summary_only", False,
                                  "only rebuild the report from results.jsonl")


def noisy_observation(apply_fn, params, x, y, delta):
  """The victim's observation with exactly `delta` added to its gradient."""
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  obs = inversion.observe(apply_fn, params, x, y, key=0, defence=None)
  noisy = jax.tree.map(lambda g, d: g + d, obs.gradient, delta)
  return dataclasses.replace(obs, gradient=noisy,
                             defence={"name": "gaussian", "exact_delta": True})


def run_all(cfg, workdir):
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import influence  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  from jaxleak.influence import audit  # pylint: disable=g-import-not-at-top

  del influence
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(workdir, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  path = os.path.join(workdir, "results.jsonl")
  done = {(r["index"], r["noise_var"]) for r in report.read_jsonl(path)}
  ds = data.load(cfg.dataset, cfg.split)
  indices = audit.stratified_indices(ds.labels, cfg.n_images, cfg.seed)
  total = len(indices) * len(cfg.noise_vars)
  count = len([1 for i in indices for v in cfg.noise_vars
               if (int(i), float(v)) in done])
  apply_fns = {}
  for pos, idx in enumerate(indices):
    idx = int(idx)
    x = np.asarray(ds.images[idx:idx + 1], np.float32)
    y = np.asarray(ds.labels[idx:idx + 1], np.int32)
    model_seed = cfg.seed * 100003 + pos
    model_fn, params = models.create(cfg.model, ds.num_classes,
                                     x.shape[1:], jax.random.key(model_seed),
                                     init=cfg.init)
    # One apply function for all images: ModelFn hashes by identity, so a new
    # one per image would recompile every jitted function (same maths).
    apply_fn = apply_fns.setdefault(cfg.model, model_fn)
    for vi, var in enumerate(cfg.noise_vars):
      if (idx, float(var)) in done:
        continue
      t0 = time.perf_counter()
      key = jax.random.fold_in(jax.random.key(model_seed), vi)
      delta = audit.gaussian_perturbation(params, float(np.sqrt(var)), key)
      pred = audit.predict(apply_fn, params, x, y, delta,
                           eps_values=tuple(cfg.eps_values),
                           noise_std=float(np.sqrt(var)), key=vi,
                           num_probes=cfg.num_probes)
      pred_time = time.perf_counter() - t0
      obs = noisy_observation(apply_fn, params, x, y, delta)
      record = {"index": idx, "position": pos, "label": int(y[0]),
                "noise_var": float(var), "model_seed": model_seed,
                "d_x": int(x.size), "predict_time_s": pred_time, **pred}
      for name, kwargs in cfg.attacks.items():
        kwargs = dict(kwargs)
        attack = kwargs.pop("attack")
        res = inversion.run_attack(attack, obs, key=model_seed * 7 + vi,
                                   ground_truth=(x, y), **kwargs)
        record[f"{name}_rmse"] = float(np.sqrt(res.metrics["mse"]))
        record[f"{name}_psnr"] = float(res.metrics["psnr"])
        record[f"{name}_ssim"] = float(res.metrics["ssim"])
        record[f"{name}_wall_s"] = float(res.wall_time_s)
        record[f"{name}_final_loss"] = float(res.final_loss)
        np.savez_compressed(os.path.join(
            workdir, "arrays", f"{idx}_{var:g}_{name}.npz"),
                            truth=x, reconstruction=res.images)
      report.append_jsonl(path, record)
      count += 1
      rmse_pred = record["i2f"] / np.sqrt(x.size)
      print(f"[{count}/{total}] image {idx} (y={y[0]}) var {var:g}: "
            f"I2F-RMSE {rmse_pred:.3g} "
            + " ".join(f"{n} {record[n + '_rmse']:.3g} "
                       f"({record[n + '_wall_s']:.1f}s)" for n in cfg.attacks)
            + f" predict {pred_time:.2f}s", flush=True)


def fill_missing_predictions(cfg, workdir):
  """Adds I²F at any eps in the config that a stored record lacks.

  The model and delta of every record are rebuilt from its seeds, so a
  later config with more eps values extends earlier results in place.
  """
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import influence  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak.influence import audit  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, "results.jsonl")
  records = report.read_jsonl(path)
  keys = [f"i2f_eps{e:g}" for e in cfg.eps_values]
  todo = [r for r in records if any(k not in r for k in keys)]
  if not todo:
    return
  ds = data.load(cfg.dataset, cfg.split)
  apply_fns = {}
  for n, r in enumerate(todo):
    idx = r["index"]
    x = np.asarray(ds.images[idx:idx + 1], np.float32)
    y = np.asarray(ds.labels[idx:idx + 1], np.int32)
    model_fn, params = models.create(cfg.model, ds.num_classes, x.shape[1:],
                                     jax.random.key(r["model_seed"]),
                                     init=cfg.init)
    apply_fn = apply_fns.setdefault(cfg.model, model_fn)
    vi = [float(v) for v in cfg.noise_vars].index(r["noise_var"])
    key = jax.random.fold_in(jax.random.key(r["model_seed"]), vi)
    delta = audit.gaussian_perturbation(params, float(np.sqrt(r["noise_var"])),
                                        key)
    for e, k in zip(cfg.eps_values, keys):
      if k not in r:
        r[k] = float(influence.i2f(apply_fn, params, x, y, delta,
                                   eps=float(e))[0])
    if n % 20 == 0:
      print(f"filled predictions {n + 1}/{len(todo)}", flush=True)
  report.write_jsonl(path, records)


PREDICTORS = ("i2f", "lower_bound", "i2f_expected")


def summarise(cfg, workdir):
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak.influence import audit  # pylint: disable=g-import-not-at-top

  records = report.read_jsonl(os.path.join(workdir, "results.jsonl"))
  d_x = records[0]["d_x"]
  var = np.asarray([r["noise_var"] for r in records])
  rows = []
  predictors = list(PREDICTORS) + [f"i2f_eps{e:g}" for e in cfg.eps_values]
  predictors = list(dict.fromkeys(predictors))
  for attack in cfg.attacks:
    actual = np.asarray([r[f"{attack}_rmse"] for r in records])
    for p in predictors:
      if p not in records[0]:
        continue
      pred = audit.predicted_rmse([r[p] for r in records], (d_x,))
      c = audit.correlation(pred, actual)
      rows.append({"attack": attack, "predictor": p, "pairs": c["n"],
                   "pearson": round(c["pearson"], 4),
                   "spearman": round(c["spearman"], 4),
                   "pearson_log10": round(c["pearson_log"], 4)})
    # Per noise level (how well I²F ranks images at a fixed noise).
    small = f"i2f_eps{min(cfg.eps_values):g}"
    for p in ("i2f", small):
      for v in sorted(set(var)):
        m = var == v
        if m.sum() < 3 or p not in records[0]:
          continue
        pred = audit.predicted_rmse(
            [r[p] for r, k in zip(records, m) if k], (d_x,))
        c = audit.correlation(pred, actual[m])
        rows.append({"attack": attack, "predictor": f"{p} @ var {v:g}",
                     "pairs": c["n"], "pearson": round(c["pearson"], 4),
                     "spearman": round(c["spearman"], 4),
                     "pearson_log10": round(c["pearson_log"], 4)})
  series = {}
  small = f"i2f_eps{min(cfg.eps_values):g}"
  for attack in cfg.attacks:
    for key, eps in (("i2f", cfg.eps_values[0]), (small, min(cfg.eps_values))):
      if key not in records[0]:
        continue
      series[f"{attack} vs I²F (eps={eps:g})"] = (
          audit.predicted_rmse([r[key] for r in records], (d_x,)),
          [r[f"{attack}_rmse"] for r in records], var)
  audit.save_scatter(series, os.path.join(workdir, "scatter.png"),
                     title=f"I²F vs attack RMSE, {cfg.model}/{cfg.dataset}, "
                     f"{len({r['index'] for r in records})} images")
  # Mean per noise level.
  levels = []
  for v in sorted(set(var)):
    rs = [r for r in records if r["noise_var"] == v]
    row = {"noise_var": v, "pairs": len(rs),
           "i2f_rmse_mean": float(np.mean(audit.predicted_rmse(
               [r["i2f"] for r in rs], (d_x,)))),
           "lower_bound_rmse_mean": float(np.mean(audit.predicted_rmse(
               [r["lower_bound"] for r in rs], (d_x,))))}
    for attack in cfg.attacks:
      row[f"{attack}_rmse_mean"] = float(np.mean(
          [r[f"{attack}_rmse"] for r in rs]))
      row[f"{attack}_psnr_median"] = float(np.median(
          [r[f"{attack}_psnr"] for r in rs]))
    levels.append(row)
  timing = {"predict_time_s_median": float(np.median(
      [r["predict_time_s"] for r in records]))}
  for attack in cfg.attacks:
    timing[f"{attack}_wall_s_median"] = float(np.median(
        [r[f"{attack}_wall_s"] for r in records]))
  report.write_json(os.path.join(workdir, "correlations.json"),
                    {"correlations": rows, "levels": levels,
                     "timing": timing})
  head = {f"{r['attack']} Pearson / Spearman ({r['predictor']}, "
          f"{r['pairs']} pairs)": f"{r['pearson']:.3f} / {r['spearman']:.3f}"
          for r in rows if r["predictor"] in ("i2f", small)}
  n_done = len({r["index"] for r in records})
  reduced = (f" **Reduced run: {n_done} images x {len(set(var))} noise levels "
             f"= {len(records)} pairs** (the full study is 50 x 4; 2 shared "
             f"CPU cores), and reduced attack iterations (see below)."
             if n_done < 50 else "")
  notes = (cfg_doc(cfg) + "\n\n" + reduced + " Predictions are reported as "
           "RMSE = I/sqrt(d_x); `pearson_log10` correlates log10 values; "
           "rows `... @ var v` correlate across images at one noise level. "
           "`predict` time covers every predictor (all eps values, lower "
           "bound, Hutchinson), not one I²F solve; see "
           "benchmarks/i2f_speed.py for that.")
  report.write_report(workdir, "I²F validation: prediction vs attack RMSE",
                      summary={**head, **{k: f"{v:.3g}" for k, v in
                                          timing.items()}},
                      tables={"Correlations": rows,
                              "Per noise level": levels},
                      figures={"I²F vs attack RMSE": "scatter.png"},
                      notes=notes, config=cfg.to_dict())
  print(report.markdown_table(rows))
  print(report.markdown_table(levels))


def cfg_doc(cfg):
  return (f"{cfg.model} ({cfg.init} init, new initialisation per image), "
          f"{cfg.dataset}/{cfg.split}, {cfg.n_images} images requested x "
          f"noise variances {list(cfg.noise_vars)}; attacks "
          + "; ".join(f"{k}: {dict(v)}" for k, v in cfg.attacks.items()))


def main(argv):
  del argv
  cfg = _CONFIG.value
  workdir = launch.study_workdir(_WORKDIR.value, "arrays",
                                 script=__file__, study=cfg.study)

  def run():
    run_all(cfg, workdir)
    fill_missing_predictions(cfg, workdir)

  launch.timed_study(workdir, lambda: summarise(cfg, workdir),
                     None if _SUMMARY_ONLY.value else run)


if __name__ == "__main__":
  launch.run(main, required=("config",))
