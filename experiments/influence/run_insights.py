"""The three I²F insights as small experiments, one figure each.

Thin launcher over `jaxleak.influence` and `jaxleak.attacks.inversion`; see
``configs/insights.py`` for what each part measures. Every attack run is
appended to ``<part>.jsonl`` as it finishes (rerun the same command to
resume); each part then writes ``<part>.png`` and its numbers into
``insights.json``, and ``report.md`` collects them.

  python experiments/influence/run_insights.py \\
      --config experiments/influence/configs/insights.py \\
      --workdir experiments/influence/results/insights
"""

import dataclasses
import json
import os
import time

import numpy as np

from jaxleak import launch

_CONFIG, _WORKDIR = launch.define_config_flags()

_APPLY = {}


def _model(cfg, num_classes, shape, seed, init):
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import models  # pylint: disable=g-import-not-at-top
  fn, params = models.create(cfg.model, num_classes, shape,
                             jax.random.key(seed), init=init)
  # Reuse one apply function (ModelFn hashes by identity; same maths).
  return _APPLY.setdefault((cfg.model, num_classes, shape), fn), params


def _load(path):
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  return report.read_jsonl(path)


def _append(path, record):
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  report.append_jsonl(path, record)


def _attack(cfg, apply_fn, params, x, y, delta, seed):
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  obs = inversion.observe(apply_fn, params, x, y, key=0, defence=None)
  obs = dataclasses.replace(obs, gradient=jax.tree.map(
      lambda g, d: g + d, obs.gradient, delta))
  kwargs = dict(cfg.attack)
  name = kwargs.pop("attack")
  res = inversion.run_attack(name, obs, key=seed, ground_truth=(x, y),
                             **kwargs)
  return res


# ----------------------------------------------------------------------------
# (a) Eigen-directions.


def part_eigen(cfg, workdir, ds):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from jaxleak import influence  # pylint: disable=g-import-not-at-top
  from jaxleak.influence import audit  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, "eigen.jsonl")
  done = {(r["image"], r["direction"]) for r in _load(path)}
  indices = audit.stratified_indices(ds.labels, cfg.eigen_images, cfg.seed)
  c = float(cfg.eigen_delta_norm)
  for pos, idx in enumerate(indices):
    idx = int(idx)
    x = np.asarray(ds.images[idx:idx + 1], np.float32)
    y = np.asarray(ds.labels[idx:idx + 1], np.int32)
    apply_fn, params = _model(cfg, ds.num_classes, x.shape[1:],
                              cfg.seed * 1000 + pos, "uniform")
    # Explicit J J^T (d_x x d_x) and its eigenpairs, in float64.
    with jax.enable_x64(True):
      p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
      x64 = jnp.asarray(x, jnp.float64)
      loss = influence.classifier_loss(apply_fn, y)
      basis = jnp.eye(x.size, dtype=jnp.float64).reshape((-1,) + x.shape)
      gram = jax.jit(jax.vmap(
          lambda e: influence.gram_vp(loss, p64, x64, e).ravel()))(basis)
      lam, u = np.linalg.eigh(np.asarray(gram))
      lam, u = lam[::-1], u[:, ::-1]
      targets = np.geomspace(lam[0], lam[0] * cfg.eigen_range,
                             cfg.eigen_directions)
      chosen = sorted({int(np.argmin(np.abs(lam - t))) for t in targets})
      directions = {}
      for i in chosen:
        v = influence.jacobian_tvp(loss, p64, x64,
                                   jnp.asarray(u[:, i]).reshape(x.shape))
        s = float(np.sqrt(lam[i]))
        directions[i] = jax.tree.map(
            lambda a, s=s: np.asarray(c * a / s, np.float32), v["params"])
    jobs = [(-1, None)] + sorted(directions.items())
    for i, delta in jobs:
      if (idx, i) in done:
        continue
      if delta is None:  # The attack's own floor, no perturbation.
        delta = jax.tree.map(lambda a: np.zeros(a.shape, np.float32),
                             params["params"])
      t0 = time.perf_counter()
      res = _attack(cfg, apply_fn, params, x, y, delta, seed=pos)
      pred = (float(influence.i2f(apply_fn, params, x, y, delta,
                                  eps=1e-4)[0]) if i >= 0 else 0.0)
      rec = {"image": idx, "direction": i,
             "lambda": float(lam[i]) if i >= 0 else None,
             "delta_norm": c if i >= 0 else 0.0,
             "predicted_norm": c / float(np.sqrt(lam[i])) if i >= 0 else 0.0,
             "i2f_eps1e-4": pred,
             "attack_mse": float(res.metrics["mse"]),
             "attack_psnr": float(res.metrics["psnr"]),
             "wall_s": time.perf_counter() - t0, "d_x": int(x.size),
             "lambda_max": float(lam[0]), "lambda_min": float(lam[-1])}
      _append(path, rec)
      print(f"eigen: image {idx} direction {i} lambda {rec['lambda']} "
            f"MSE {rec['attack_mse']:.3g} predicted "
            f"{rec['predicted_norm']**2 / x.size:.3g}", flush=True)
  records = _load(path)
  pert = [r for r in records if r["direction"] >= 0]
  floor = [r["attack_mse"] for r in records if r["direction"] < 0]
  inv = np.asarray([1.0 / r["lambda"] for r in pert])
  mse = np.asarray([r["attack_mse"] for r in pert])
  pred = np.asarray([r["predicted_norm"] ** 2 / r["d_x"] for r in pert])
  slope = float(np.polyfit(np.log10(inv), np.log10(mse), 1)[0])
  from jaxleak.influence import audit as audit_  # pylint: disable=g-import-not-at-top
  corr = audit_.correlation(inv, mse)
  from jaxleak.metrics import figures  # pylint: disable=g-import-not-at-top
  fig = figures.new_figure((5.0, 4.0), 110)
  ax = fig.add_subplot(1, 1, 1)
  ax.loglog(inv, mse, "o", label="L2 attack MSE")
  order = np.argsort(inv)
  ax.loglog(inv[order], pred[order], "k--",
            label="I²F: ||δ||² / (d_x λ)")
  if floor:
    ax.axhline(np.mean(floor), color="grey", lw=0.8,
               label="attack floor (δ = 0)")
  ax.set_xlabel("1 / λ (eigenvalue of J Jᵀ)")
  ax.set_ylabel("MSE")
  ax.set_title(f"(a) δ along singular vectors, ||δ|| = {cfg.eigen_delta_norm}"
               f"\nlog-log slope {slope:.2f} (I²F: 1), Pearson "
               f"{corr['pearson']:.3f}", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  figures.save_figure(fig, os.path.join(workdir, "eigen.png"), 110)
  return {"directions": len(pert), "loglog_slope": slope,
          "pearson_mse_vs_inv_lambda": corr["pearson"],
          "spearman_mse_vs_inv_lambda": corr["spearman"],
          "pearson_log": corr["pearson_log"],
          "attack_floor_mse": float(np.mean(floor)) if floor else None,
          "rows": [{"lambda": r["lambda"], "1/lambda": 1 / r["lambda"],
                    "attack_mse": r["attack_mse"],
                    "predicted_mse": r["predicted_norm"] ** 2 / r["d_x"],
                    "i2f_eps1e-4_mse": r["i2f_eps1e-4"] ** 2 / r["d_x"]}
                   for r in pert]}


# ----------------------------------------------------------------------------
# (b) Per-class distribution.


def part_classes(cfg, workdir, ds):
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak.influence import audit  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, "classes.jsonl")
  done = {r["index"] for r in _load(path)}
  n = cfg.class_images_per_class * ds.num_classes
  indices = audit.stratified_indices(ds.labels, n, cfg.seed)
  apply_fn, params = _model(cfg, ds.num_classes, ds.image_shape, cfg.seed,
                            "uniform")
  std = float(np.sqrt(cfg.class_noise_var))
  for pos, idx in enumerate(indices):
    idx = int(idx)
    if idx in done:
      continue
    x = np.asarray(ds.images[idx:idx + 1], np.float32)
    y = np.asarray(ds.labels[idx:idx + 1], np.int32)
    delta = audit.gaussian_perturbation(
        params, std, jax.random.fold_in(jax.random.key(cfg.seed), pos))
    pred = audit.predict(apply_fn, params, x, y, delta,
                         eps_values=tuple(cfg.class_eps), noise_std=std,
                         key=pos, num_probes=cfg.class_probes)
    _append(path, {"index": idx, "label": int(y[0]), "d_x": int(x.size),
                   **pred})
    if pos % 10 == 0:
      print(f"classes: {pos + 1}/{n}", flush=True)
  records = _load(path)
  d = records[0]["d_x"]
  from jaxleak.metrics import figures  # pylint: disable=g-import-not-at-top
  keys = [("i2f_expected", f"sqrt(E[I²]) (eps={cfg.class_eps[0]:g})"),
          (f"i2f_eps{cfg.class_eps[1]:g}",
           f"I²F, one draw (eps={cfg.class_eps[1]:g})")]
  fig = figures.new_figure((10.0, 4.0), 110)
  out = {"images": len(records), "per_class": []}
  for k, (key, title) in enumerate(keys):
    ax = fig.add_subplot(1, 2, k + 1)
    groups = [np.asarray([r[key] for r in records if r["label"] == c]) /
              np.sqrt(d) for c in range(ds.num_classes)]
    ax.boxplot(groups, tick_labels=[str(c) for c in range(ds.num_classes)])
    ax.set_yscale("log")
    means = [float(g.mean()) for g in groups]
    spread = max(means) / min(means)
    allv = np.concatenate(groups)
    ax.set_title(f"{title}\nclass means differ {spread:.1f}x; images "
                 f"{allv.max() / allv.min():.0f}x", fontsize=9)
    ax.set_xlabel("class")
    ax.set_ylabel("predicted RMSE")
    out[f"{key}_class_mean_ratio"] = spread
    out[f"{key}_image_ratio"] = float(allv.max() / allv.min())
    for c, g in enumerate(groups):
      if k == 0:
        out["per_class"].append({"class": c, "images": int(g.size)})
      out["per_class"][c][f"{key}_mean_rmse"] = float(g.mean())
      out["per_class"][c][f"{key}_min_rmse"] = float(g.min())
  fig.suptitle(f"(b) per-class I²F under Gaussian noise var "
               f"{cfg.class_noise_var:g} (lenet, one uniform init)",
               fontsize=10)
  fig.tight_layout()
  figures.save_figure(fig, os.path.join(workdir, "classes.png"), 110)
  return out


# ----------------------------------------------------------------------------
# (c) Initialisation.


def part_init(cfg, workdir, ds):
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak.influence import audit  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, "init.jsonl")
  done = {(r["init"], r["index"]) for r in _load(path)}
  indices = audit.stratified_indices(ds.labels, cfg.init_images, cfg.seed)
  std = float(np.sqrt(cfg.init_noise_var))
  for init in cfg.inits:
    for pos, idx in enumerate(indices):
      idx = int(idx)
      if (init, idx) in done:
        continue
      x = np.asarray(ds.images[idx:idx + 1], np.float32)
      y = np.asarray(ds.labels[idx:idx + 1], np.int32)
      apply_fn, params = _model(cfg, ds.num_classes, x.shape[1:],
                                cfg.seed * 1000 + pos, init)
      delta = audit.gaussian_perturbation(
          params, std, jax.random.fold_in(jax.random.key(cfg.seed), pos))
      pred = audit.predict(apply_fn, params, x, y, delta,
                           eps_values=tuple(cfg.init_eps))
      res = _attack(cfg, apply_fn, params, x, y, delta, seed=pos)
      rec = {"init": init, "index": idx, "label": int(y[0]),
             "d_x": int(x.size), **pred,
             "attack_rmse": float(np.sqrt(res.metrics["mse"])),
             "attack_psnr": float(res.metrics["psnr"])}
      _append(path, rec)
      print(f"init {init} image {idx}: I2F-RMSE "
            f"{rec['i2f'] / np.sqrt(x.size):.3g} attack "
            f"{rec['attack_rmse']:.3g}", flush=True)
  records = _load(path)
  d = records[0]["d_x"]
  rows = []
  for init in cfg.inits:
    rs = [r for r in records if r["init"] == init]
    row = {"init": init, "images": len(rs)}
    for key in ["i2f"] + [f"i2f_eps{e:g}" for e in cfg.init_eps[1:]]:
      v = np.asarray([r[key] for r in rs]) / np.sqrt(d)
      row[f"{key}_rmse_median"] = float(np.median(v))
    row["attack_rmse_median"] = float(np.median([r["attack_rmse"]
                                                 for r in rs]))
    row["attack_psnr_median"] = float(np.median([r["attack_psnr"]
                                                 for r in rs]))
    row["lambda_max_median"] = float(np.median([r["lambda_max"]
                                                for r in rs]))
    rows.append(row)
  from jaxleak.metrics import figures  # pylint: disable=g-import-not-at-top
  fig = figures.new_figure((6.5, 4.0), 110)
  ax = fig.add_subplot(1, 1, 1)
  xs = np.arange(len(rows))
  small = f"i2f_eps{cfg.init_eps[-1]:g}"
  series = [("attack_rmse", "L2 attack RMSE"),
            ("i2f", f"I²F (eps={cfg.init_eps[0]:g})"),
            (small, f"I²F (eps={cfg.init_eps[-1]:g})")]
  for k, (key, label) in enumerate(series):
    vals = [np.asarray([r[key] for r in records if r["init"] == row["init"]])
            / (1.0 if key == "attack_rmse" else np.sqrt(d)) for row in rows]
    ax.bar(xs + (k - 1) * 0.27, [np.median(v) for v in vals], 0.27,
           label=label)
    for j, v in enumerate(vals):
      ax.plot(np.full(v.size, xs[j] + (k - 1) * 0.27), v, "k.", ms=3)
  ax.set_xticks(xs, [r["init"] for r in rows])
  ax.set_yscale("log")
  ax.set_ylabel("RMSE (median; dots = images)")
  ax.set_title(f"(c) initialisation, noise var {cfg.init_noise_var:g}, "
               f"{cfg.init_images} images each", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  figures.save_figure(fig, os.path.join(workdir, "init.png"), 110)
  return {"rows": rows}


PARTS = {"eigen": part_eigen, "classes": part_classes, "init": part_init}


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top

  cfg = _CONFIG.value
  workdir = launch.study_workdir(_WORKDIR.value, script=__file__,
                                 study="insights")
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(workdir, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  ds = data.load(cfg.dataset, cfg.split)
  out_path = os.path.join(workdir, "insights.json")
  results = json.load(open(out_path)) if os.path.exists(out_path) else {}
  for part in cfg.parts:
    t0 = time.time()
    results[part] = PARTS[part](cfg, workdir, ds)
    results[part]["time_s"] = time.time() - t0
    report.write_json(out_path, results)
    print(f"{part}: done in {time.time() - t0:.0f} s", flush=True)
  tables, summary = {}, {}
  if "eigen" in results:
    e = results["eigen"]
    summary["(a) log-log slope of MSE vs 1/lambda (I²F: 1)"] = (
        f"{e['loglog_slope']:.3f}")
    summary["(a) Pearson MSE vs 1/lambda"] = f"{e['pearson_mse_vs_inv_lambda']:.3f}"
    tables["(a) eigen-directions"] = e["rows"]
  if "classes" in results:
    c = results["classes"]
    for k, v in c.items():
      if k.endswith("_ratio"):
        summary[f"(b) {k}"] = f"{v:.2f}"
    tables["(b) per class"] = c["per_class"]
  if "init" in results:
    tables["(c) initialisation"] = results["init"]["rows"]
  report.write_report(
      workdir, "I²F insights", summary=summary, tables=tables,
      figures={f"({letter}) {p}": f"{p}.png" for letter, p in
               (("a", "eigen"), ("b", "classes"), ("c", "init"))
               if p in results},
      notes=("(a) perturbations of fixed norm along singular directions of "
             "J; (b) Gaussian noise, one model; (c) each initialisation "
             "scheme, same images and noise. Reduced sizes: see the config."),
      config=cfg.to_dict())


if __name__ == "__main__":
  launch.run(main, required=("config",))
