"""Diffusion-guided gradient inversion under gradient noise, with RV.

Thin launcher over `jaxleak.attacks.inversion` (attacks `diffusion_dps`,
`diffusion_dsg`, `inverting_gradients`; `theory.reconstruction_vulnerability`).
For every trial (one private test image and one victim initialisation),
victim architecture, attack and relative Gaussian noise level it runs the
attack and appends a record to ``results.jsonl``; a rerun of the same command
skips what is done (resumable). Before the attacks, per architecture:

* a *calibration* record: the steady-state wall time of one diffusion
  reconstruction (the slower of DPS and DSG, compiled program reused) and
  Inverting Gradients' seconds per step, from which IG's step count for a
  matched wall-clock budget is set (``ig_steps = budget / s_per_step``);
* per trial an *rv* record: the RV measure (max of the Hutchinson estimate
  of ``‖∂x ∂θ L‖_F`` over candidate test images, shared Jacobian code),
  ``‖J(x*)‖_F`` at the private image and the clean gradient's RMS.

Then ``report.md``, ``results.md``/``results.csv`` and the PNGs are written:

  nice -n 10 python experiments/diffusion_attacks/run.py \\
      --config experiments/diffusion_attacks/configs/acceptance.py \\
      --workdir experiments/diffusion_attacks/results/acceptance
  python experiments/diffusion_attacks/run.py --config ... --workdir ... \\
      --report_only
"""

import csv
import json
import os
import time

from absl import flags
import numpy as np

from jaxleak import launch

_CONFIG, _WORKDIR = launch.define_config_flags()
_REPORT_ONLY = flags.DEFINE_bool("report_only", False,
                                 "only summarise results.jsonl")

METRICS = ("psnr", "ssim", "mse", "wall_time_s")


def _log(msg):
  print(time.strftime("%H:%M:%S"), msg, flush=True)


def _records(workdir):
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  return report.read_jsonl(os.path.join(workdir, "results.jsonl"))


def _append(workdir, record):
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  report.append_jsonl(os.path.join(workdir, "results.jsonl"), record)


def _case(cfg, model):
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  spec = dict(cfg.models[model])
  return inversion.Case(
      model=spec["model"], dataset=cfg.dataset, split=cfg.split,
      resolution=cfg.resolution, init=spec.get("init", "default"),
      model_kwargs=tuple(sorted(dict(spec.get("kwargs", {})).items())))


def _model_attacks(cfg, model):
  """The attacks run on `model`: its own "attacks" list, else all of them."""
  return list(cfg.models[model].get("attacks", cfg.attacks))


def _attack_kwargs(cfg, attack, calib):
  kw = dict(cfg.attacks[attack])
  name = kw.pop("attack", attack)
  if name.startswith("diffusion_"):
    kw.setdefault("prior", cfg.prior)
    kw.setdefault("log_every", 1000)
  if kw.get("steps") == "matched":
    kw["steps"] = int(calib["ig_steps"])
  return name, kw


def calibrate(cfg, workdir, model, done):
  """Matched budget: steady diffusion time vs IG seconds per step."""
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  for r in done:
    if r["kind"] == "calibration" and r["model"] == model:
      return r
  case = _case(cfg, model)
  batch = inversion.simulate(case, seed=cfg.seed, trial=10_000)
  diff_times = {}
  for attack in _model_attacks(cfg, model):
    name, kw = _attack_kwargs(cfg, attack, {"ig_steps": 1})
    if not name.startswith("diffusion_"):
      continue
    inversion.run_attack(name, batch.observation, key=0, **kw)  # compile
    t0 = time.perf_counter()
    inversion.run_attack(name, batch.observation, key=1, **kw)
    diff_times[attack] = time.perf_counter() - t0
    _log(f"calibration {model}/{attack}: {diff_times[attack]:.1f} s steady")
  probe = cfg.calibration_ig_steps
  inversion.run_attack("inverting_gradients", batch.observation, key=0,
                       steps=probe)
  t0 = time.perf_counter()
  inversion.run_attack("inverting_gradients", batch.observation, key=1,
                       steps=probe)
  ig_per_step = (time.perf_counter() - t0) / probe
  budget = max(diff_times.values())
  rec = {"kind": "calibration", "model": model,
         "diffusion_steady_s": diff_times, "budget_s": budget,
         "ig_s_per_step": ig_per_step,
         "ig_steps": int(max(probe, round(budget / ig_per_step)))}
  _log(f"calibration {model}: budget {budget:.1f} s -> IG "
       f"{rec['ig_steps']} steps ({ig_per_step * 1e3:.1f} ms/step)")
  _append(workdir, rec)
  return rec


def rv_record(cfg, workdir, model, trial, done):
  """RV over candidate test images for this trial's victim parameters."""
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import data as data_lib  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks.inversion import theory  # pylint: disable=g-import-not-at-top
  # Older records lack the logits RV and the posterior floor: they are
  # recomputed and the report uses the newest record per trial.
  if any(r["kind"] == "rv" and r["model"] == model and r["trial"] == trial
         and "posterior_rmse" in r for r in done):
    return
  case = _case(cfg, model)
  batch = inversion.simulate(case, seed=cfg.seed, trial=trial)
  obs = batch.observation
  ds = data_lib.load(case.dataset, case.split, case.data_dir,
                     resolution=case.resolution)
  rng = np.random.default_rng([cfg.seed, 777])
  idx = rng.choice(len(ds.labels), cfg.rv.num_candidates, replace=False)
  cand = np.concatenate([batch.ground_truth.images,
                         np.asarray(ds.images[idx], np.float32)])
  cand_y = np.concatenate([batch.ground_truth.labels,
                           np.asarray(ds.labels[idx], np.int32)])
  t0 = time.perf_counter()
  res = inversion.reconstruction_vulnerability(
      obs.apply_fn, obs.params, cand, cand_y,
      key=jax.random.key(cfg.seed + trial), num_probes=cfg.rv.num_probes)
  res_f = inversion.reconstruction_vulnerability(
      obs.apply_fn, obs.params, cand, cand_y,
      key=jax.random.key(cfg.seed + trial), num_probes=cfg.rv.num_probes,
      target="logits")
  grad_rms = float(inversion.tree_rms(obs.gradient))
  # The whole spectrum of J J^T at the private input, and the linear-Gaussian
  # error floor at each noise level under a prior with the data's per-pixel
  # variance (theory.linearized_posterior_rmse).
  lam = theory.input_gram_eigenvalues(obs.apply_fn, obs.params,
                                      batch.ground_truth.images,
                                      batch.ground_truth.labels)
  prior_var = float(np.mean(np.var(np.asarray(ds.images, np.float64), 0)))
  floors = theory.linearized_posterior_rmse(
      lam, np.asarray(cfg.noise_levels) * grad_rms, prior_var)
  rec = {"kind": "rv", "model": model, "trial": trial, "rv": res.rv,
         "j_private": float(res.per_input[0]),
         "per_input": res.per_input.tolist(), "num_params": res.num_params,
         "input_size": res.input_size, "grad_rms": grad_rms,
         "per_input_grad_rms": res.grad_rms.tolist(),
         "relative": res.relative.tolist(), "rv_relative": res.rv_relative,
         "j_private_relative": float(res.relative[0]),
         "rv_logits": res_f.rv, "j_private_logits": float(res_f.per_input[0]),
         "prior_variance": prior_var,
         "posterior_rmse": {f"{n:g}": float(f)
                            for n, f in zip(cfg.noise_levels, floors)},
         "gram_eigenvalue_quantiles": np.quantile(
             lam, [0.0, 0.01, 0.1, 0.5, 0.9, 1.0]).tolist(),
         "num_probes": res.num_probes, "time_s": time.perf_counter() - t0}
  _log(f"rv {model} trial {trial}: RV {res.rv:.4g} (logits {res_f.rv:.4g}),"
       f" |J(x*)| {res.per_input[0]:.4g}, relative {res.relative[0]:.4g}, "
       f"floor RMSE @ {cfg.noise_levels[-1]:g}: {floors[-1]:.4g}")
  _append(workdir, rec)


def run_all(cfg, workdir):
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(workdir, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  done = _records(workdir)
  runs_done = {(r["model"], r["attack"], r["noise"], r["trial"])
               for r in done if r["kind"] == "run"}
  calib = {m: calibrate(cfg, workdir, m, done) for m in cfg.models}
  for trial in range(cfg.trials):
    for model in cfg.models:
      rv_record(cfg, workdir, model, trial, done)
      case = _case(cfg, model)
      for attack in _model_attacks(cfg, model):
        name, kw = _attack_kwargs(cfg, attack, calib[model])
        for noise in cfg.noise_levels:
          if (model, attack, noise, trial) in runs_done:
            continue
          defence = inversion.GaussianNoise(std=float(noise), relative=True)
          batch = inversion.simulate(case, seed=cfg.seed, trial=trial,
                                     defence=defence)
          res = inversion.run_attack(name, batch.observation,
                                     key=cfg.seed * 100003 + trial,
                                     ground_truth=batch.ground_truth, **kw)
          arrays = {"truth": batch.ground_truth.images,
                    "reconstruction": res.images, "loss": res.loss_history}
          traj = getattr(res, "trajectory", None)
          if traj is not None:
            arrays["trajectory"] = traj
          np.savez_compressed(os.path.join(
              workdir, "arrays",
              f"{model}__{attack}__{noise:g}__{trial}.npz"), **arrays)
          rec = {"kind": "run", "model": model, "attack": attack,
                 "noise": noise, "trial": trial,
                 "index": int(batch.indices[0]),
                 "label": int(batch.ground_truth.labels[0]),
                 **{k: res.metrics[k] for k in ("psnr", "ssim", "lpips", "mse")},
                 "wall_time_s": res.wall_time_s,
                 "final_loss": res.final_loss,
                 "hyperparams": dict(res.hyperparams)}
          _append(workdir, rec)
          _log(f"trial {trial} {model} {attack} noise {noise:g}: PSNR "
               f"{rec['psnr']:.2f} SSIM {rec['ssim']:.3f} "
               f"({res.wall_time_s:.1f} s)")


def _mean_std(vals):
  vals = np.asarray([v for v in vals if v is not None], float)
  if not vals.size:
    return float("nan"), float("nan")
  return float(vals.mean()), float(vals.std())


def summarise(cfg, workdir):
  # pylint: disable=g-import-not-at-top
  from jaxleak import metrics as metrics_lib
  from jaxleak import report
  from jaxleak.attacks.inversion import theory
  from jaxleak.metrics import figures as figures_lib
  # pylint: enable=g-import-not-at-top

  records = _records(workdir)
  runs = [r for r in records if r["kind"] == "run"]
  newest_rv = {(r["model"], r["trial"]): r for r in records
               if r["kind"] == "rv"}
  rvs = list(newest_rv.values())
  calib = {r["model"]: r for r in records if r["kind"] == "calibration"}
  rows, csv_rows = [], []
  for model in cfg.models:
    for noise in cfg.noise_levels:
      for attack in cfg.attacks:
        rs = [r for r in runs if r["model"] == model and r["attack"] == attack
              and r["noise"] == noise]
        if not rs:
          continue
        p, ps = _mean_std([r["psnr"] for r in rs])
        s, ss = _mean_std([r["ssim"] for r in rs])
        steps = rs[0]["hyperparams"].get("steps")
        wall = float(np.median([r["wall_time_s"] for r in rs]))
        rows.append({"victim": model, "noise (x RMS)": f"{noise:g}",
                     "attack": attack, "n": len(rs),
                     "PSNR (dB)": f"{p:.2f} ± {ps:.2f}",
                     "SSIM": f"{s:.3f} ± {ss:.3f}", "steps": steps,
                     "median wall (s)": f"{wall:.1f}"})
        csv_rows.append({"victim": model, "noise": noise, "attack": attack,
                         "n": len(rs), "psnr_mean": p, "psnr_std": ps,
                         "ssim_mean": s, "ssim_std": ss, "steps": steps,
                         "wall_median_s": wall})
  if csv_rows:
    with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
      w.writeheader()
      w.writerows(csv_rows)
  figures = {}
  # PSNR / SSIM vs noise, one panel per victim.
  models = [m for m in cfg.models if any(r["model"] == m for r in runs)]
  if models:
    fig = figures_lib.new_figure((5 * len(models), 7), 100)
    axes = fig.subplots(2, len(models), squeeze=False)
    xs = [max(n, 1e-4) for n in cfg.noise_levels]
    for j, model in enumerate(models):
      for attack in _model_attacks(cfg, model):
        for i, key in enumerate(("psnr", "ssim")):
          m, s = [], []
          for noise in cfg.noise_levels:
            mm, sd = _mean_std([r[key] for r in runs if r["model"] == model
                                and r["attack"] == attack
                                and r["noise"] == noise])
            m.append(mm)
            s.append(sd)
          axes[i, j].errorbar(xs, m, yerr=s, marker="o", capsize=3,
                              label=attack)
          axes[i, j].set_xscale("log")
          axes[i, j].set_xlabel("noise std / gradient RMS (0 plotted at 1e-4)")
          axes[i, j].set_ylabel(key.upper())
          axes[i, j].set_title(model)
      axes[0, j].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, "psnr_ssim_vs_noise.png")
    figures_lib.save_figure(fig, path, 100)
    figures["PSNR and SSIM vs relative gradient-noise std"] = path
  # Theory: RMSE vs absolute noise std next to the linearised bound shape.
  rv_rows = []
  if rvs and models:
    fig = figures_lib.new_figure((5 * len(models), 4), 100)
    axes = fig.subplots(1, len(models), squeeze=False)
    for j, model in enumerate(models):
      mr = [r for r in rvs if r["model"] == model]
      if not mr:
        continue
      grad_rms = {r["trial"]: r["grad_rms"] for r in mr}
      jpriv = {r["trial"]: r["j_private"] for r in mr}
      ax = axes[0, j]
      for attack in cfg.attacks:
        pts = [(r["noise"] * grad_rms[r["trial"]], np.sqrt(r["mse"]))
               for r in runs if r["model"] == model
               and r["attack"] == attack and r["trial"] in grad_rms
               and r["noise"] > 0]
        if pts:
          a = np.asarray(pts)
          ax.scatter(a[:, 0], a[:, 1], s=12, label=attack)
      s_abs = np.asarray([n * np.mean(list(grad_rms.values()))
                          for n in cfg.noise_levels if n > 0])
      bound = theory.linearized_error_bound(
          s_abs, float(np.mean(list(jpriv.values()))), mr[0]["input_size"],
          mr[0]["num_params"])
      ax.plot(s_abs, bound, "k--", label="linearised floor s·k/(√d·‖J‖_F)")
      ax.set_xscale("log")
      ax.set_yscale("log")
      ax.set_xlabel("absolute noise std s")
      ax.set_ylabel("per-pixel RMSE")
      ax.set_title(f"{model} (RV {np.mean([r['rv'] for r in mr]):.3g})")
      ax.legend(fontsize=7)
      psnr_all, _ = _mean_std([r["psnr"] for r in runs
                               if r["model"] == model])
      psnr_by = {}
      for noise in cfg.noise_levels:
        best = max((_mean_std([r["psnr"] for r in runs if r["model"] == model
                               and r["attack"] == at
                               and r["noise"] == noise])[0]
                    for at in _model_attacks(cfg, model)),
                   default=float("nan"))
        psnr_by[noise] = best
      rv_m, rv_s = _mean_std([r["rv"] for r in mr])
      floor = [float(theory.linearized_error_bound(
          0.1 * r["grad_rms"], r["j_private"], r["input_size"],
          r["num_params"])) for r in mr]
      row = {"victim": model, "params": mr[0]["num_params"],
             "RV, loss (max over candidates)": f"{rv_m:.4g} ± {rv_s:.2g}"}
      if all("rv_logits" in r for r in mr):
        # The noise here is a multiple of the gradient's RMS, so what it has
        # to mask is the sensitivity per unit of gradient RMS (module
        # docstring of `theory`): the noise-relative RV.
        rel = [r["j_private_relative"] for r in mr]
        rel_max = [r["rv_relative"] for r in mr]
        f_m, f_s = _mean_std([r["rv_logits"] for r in mr])
        row.update({
            "RV, logits F (max over candidates)": f"{f_m:.4g} ± {f_s:.2g}",
            "noise-relative RV at x*, mean [min, max]":
                f"{np.mean(rel):.4g} [{np.min(rel):.4g}, {np.max(rel):.4g}]",
            "noise-relative RV (max over candidates), mean / median":
                f"{np.mean(rel_max):.4g} / {np.median(rel_max):.4g}"})
      if all("posterior_rmse" in r for r in mr):
        # Linear-Gaussian MMSE from the whole spectrum of J J^T, as a PSNR
        # (images in [0, 1]) to set beside the measured best PSNR.
        for n in cfg.noise_levels:
          if n > 0:
            fl = [r["posterior_rmse"][f"{n:g}"] for r in mr]
            row[f"floor PSNR @ {n:g}"] = f"{np.mean(-20 * np.log10(fl)):.2f}"
      row.update({"grad RMS": f"{np.mean(list(grad_rms.values())):.3g}",
                  "RMSE floor (Frobenius shape) @ 0.1":
                      f"{np.mean(floor):.3g}"})
      rv_rows.append({**row,
                      "trials": len(mr),
                      "PSNR, all runs": f"{psnr_all:.2f}",
                      **{f"best PSNR @ {n:g}": f"{v:.2f}"
                         for n, v in psnr_by.items()}})
    fig.tight_layout()
    path = os.path.join(workdir, "rmse_vs_noise_theory.png")
    figures_lib.save_figure(fig, path, 100)
    figures["Per-pixel RMSE vs absolute noise std, with the linearised "
            "error floor (theory)"] = path
  # Reconstruction grids: per victim, rows = truth then attack x noise.
  for model in models:
    cells, labels = [], []
    for trial in range(min(cfg.trials, 4)):
      f0 = os.path.join(workdir, "arrays",
                        f"{model}__{_model_attacks(cfg, model)[0]}__0__"
                        f"{trial}.npz")
      if not os.path.exists(f0):
        continue
      cells.append(np.load(f0)["truth"][0])
      labels.append(f"truth {trial}")
      for attack in _model_attacks(cfg, model):
        for noise in cfg.noise_levels:
          f = os.path.join(workdir, "arrays",
                           f"{model}__{attack}__{noise:g}__{trial}.npz")
          if os.path.exists(f):
            cells.append(np.load(f)["reconstruction"][0])
          else:
            cells.append(np.zeros_like(cells[-1]))
          labels.append(f"{attack.replace('diffusion_', '')[:6]} {noise:g}")
    if cells:
      ncol = 1 + len(_model_attacks(cfg, model)) * len(cfg.noise_levels)
      path = metrics_lib.save_image_grid(
          np.stack(cells), os.path.join(workdir, f"grid_{model}.png"),
          nrow=ncol, titles=labels, cell_size=1.1)
      figures[f"{model}: truth, then each attack at each noise level "
              "(per row one trial)"] = path
  # x0_hat trajectory of one run per diffusion attack: trial 0, no noise, on
  # the first victim (in name order) that ran the attack.
  for attack in cfg.attacks:
    for model in models:
      f = os.path.join(workdir, "arrays", f"{model}__{attack}__0__0.npz")
      if os.path.exists(f) and "trajectory" in np.load(f):
        traj = np.load(f)["trajectory"][:, 0]
        pick = np.unique(np.linspace(0, len(traj) - 1, 10).astype(int))
        path = metrics_lib.save_image_grid(
            traj[pick], os.path.join(workdir, f"trajectory_{attack}.png"),
            nrow=len(pick), titles=[f"step {i}" for i in pick])
        figures[f"x0_hat trajectory, {attack}, {model}, no noise"] = path
        break
  tables = {"PSNR / SSIM (mean ± std over trials)": rows}
  if rv_rows:
    tables["Reconstruction vulnerability vs measured PSNR"] = rv_rows
  if calib:
    tables["Matched wall-clock budget (calibration)"] = [
        {"victim": m, "diffusion steady s": json.dumps(
            {k: round(v, 1) for k, v in c["diffusion_steady_s"].items()}),
         "budget s": f"{c['budget_s']:.1f}",
         "IG ms/step": f"{c['ig_s_per_step'] * 1e3:.1f}",
         "IG steps": c["ig_steps"]} for m, c in calib.items()]
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(f"# {cfg.title}\n\n{cfg.description}\n\n")
    for name, t in tables.items():
      f.write(f"## {name}\n\n{report.markdown_table(t)}\n")
  report.write_report(workdir, cfg.title, tables=tables, figures=figures,
                      notes=cfg.description, config=cfg.to_dict())
  for name, t in tables.items():
    print(f"## {name}\n{report.markdown_table(t)}")


def main(argv):
  del argv
  cfg = _CONFIG.value
  workdir = launch.study_workdir(_WORKDIR.value, "arrays",
                                 script=__file__, study=cfg.study)

  def run():
    from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top
    # Few runs share each compiled program here, so quicker compilation
    # (slower steps, the same for every attack) costs less overall.
    with inversion.compiler_options(
        inversion.FAST_COMPILE if cfg.get("fast_compile") else None):
      run_all(cfg, workdir)

  launch.timed_study(workdir, lambda: summarise(cfg, workdir),
                     None if _REPORT_ONLY.value else run)


if __name__ == "__main__":
  launch.run(main, required=("config",))
