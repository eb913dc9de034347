"""Runs a gradient-inversion study and writes tables and figures.

Thin launcher: all logic is jaxleak's (`jaxleak.attacks.inversion`). A study
config lists a case, attacks with their hyper-parameters (keyed by a row
label; an ``"attack"`` entry names the registered attack when the label
differs), defences and a number of trials; every (defence, attack, trial) is one run, appended to
``results.jsonl`` as it finishes, so an interrupted study resumes by rerunning
the same command. Then ``results.md`` / ``results.csv`` (mean ± std per
defence and attack), a reconstruction grid per (defence, attack) and
``report.md`` are written.

  python experiments/inversion/run_inversion.py \\
      --config experiments/inversion/configs/dlg.py \\
      --workdir experiments/inversion/results/dlg
"""

import csv
import os

import numpy as np

from jaxleak import launch

_CONFIG, _WORKDIR = launch.define_config_flags()

METRICS = ("psnr", "ssim", "lpips", "mse", "label_acc", "wall_time_s")


def run_all(cfg, workdir):
  import jax  # pylint: disable=g-import-not-at-top
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak.attacks import inversion  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(workdir, ".jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  path = os.path.join(workdir, "results.jsonl")
  done = {(r["defence"], r["attack"], r["trial"])
          for r in report.read_jsonl(path)}
  case = inversion.CASES[cfg.case].replace(**dict(cfg.case_overrides))
  trials = list(cfg.trials) if not isinstance(cfg.trials, int) else list(
      range(cfg.trials))
  defences = [(d[0], d[1], dict(d[2])) for d in cfg.defences]
  total = len(defences) * len(cfg.attacks) * len(trials)
  bar = tqdm(total=total, initial=len(done), desc=cfg.study, unit="run")
  for d_label, d_name, d_kwargs in defences:
    defence = inversion.make_defence(d_name, **d_kwargs)
    for attack, kwargs in cfg.attacks.items():
      # The key labels the row; "attack" names a registered attack if the
      # label differs (e.g. the same attack with other hyper-parameters).
      kwargs = dict(kwargs)
      attack_name = kwargs.pop("attack", attack)
      for trial in trials:
        if (d_label, attack, trial) in done:
          continue
        batch = inversion.simulate(case, seed=cfg.seed, trial=trial,
                                   defence=defence)
        res = inversion.run_attack(attack_name, batch.observation,
                                   key=cfg.seed * 100003 + trial,
                                   ground_truth=batch.ground_truth, **kwargs)
        perm = np.asarray(res.metrics["permutation"])
        np.savez_compressed(
            os.path.join(workdir, "arrays",
                         f"{d_label}__{attack}__{trial}.npz"),
            truth=batch.ground_truth.images, reconstruction=res.images[perm],
            loss=res.loss_history)
        record = {"defence": d_label, "attack": attack, "trial": trial,
                  "indices": batch.indices.tolist(),
                  "true_labels": np.asarray(batch.ground_truth.labels).tolist(),
                  "labels": res.labels.tolist(),
                  "label_confidence": res.label_confidence,
                  **{k: res.metrics[k] for k in METRICS if k in res.metrics},
                  "wall_time_s": res.wall_time_s,
                  "final_loss": res.final_loss,
                  "hyperparams": dict(res.hyperparams),
                  "defence_spec": batch.observation.defence}
        report.append_jsonl(path, record)
        bar.update(1)
        bar.set_postfix(defence=d_label, attack=attack,
                        psnr=f"{res.metrics['psnr']:.2f}")
  bar.close()


def summarise(cfg, workdir):
  # pylint: disable-next=g-import-not-at-top
  from jaxleak import metrics as metrics_lib
  from jaxleak import report  # pylint: disable=g-import-not-at-top

  records = report.read_jsonl(os.path.join(workdir, "results.jsonl"))
  order = [d[0] for d in cfg.defences]
  rows = []
  for d_label in order:
    for attack in cfg.attacks:
      rs = [r for r in records if r["defence"] == d_label
            and r["attack"] == attack]
      if not rs:
        continue
      row = {"defence": d_label, "attack": attack, "trials": len(rs)}
      for k in METRICS:
        vals = np.asarray([r[k] for r in rs if r.get(k) is not None], float)
        row[f"{k}_mean"] = float(vals.mean()) if vals.size else float("nan")
        row[f"{k}_std"] = float(vals.std()) if vals.size else float("nan")
      psnrs = np.asarray([r["psnr"] for r in rs], float)
      row["psnr_median"] = float(np.median(psnrs))
      row["psnr_min"] = float(psnrs.min())
      # The first run of each attack includes its compilation.
      row["wall_time_s_median"] = float(np.median(
          [r["wall_time_s"] for r in rs]))
      if cfg.get("psnr_threshold"):
        row[f"psnr>={cfg.psnr_threshold:g}"] = float(
            np.mean(psnrs >= cfg.psnr_threshold))
      rows.append(row)
      # Reconstruction grid: the first trials' batches (up to 8 images).
      truths, recs = [], []
      for r in sorted(rs, key=lambda r: r["trial"]):
        z = np.load(os.path.join(workdir, "arrays",
                                 f"{d_label}__{attack}__{r['trial']}.npz"))
        truths.append(z["truth"])
        recs.append(z["reconstruction"])
        if sum(len(t) for t in truths) >= 8:
          break
      metrics_lib.save_comparison_grid(
          np.concatenate(truths)[:8], np.concatenate(recs)[:8],
          os.path.join(workdir, f"grid_{d_label}_{attack}.png"))
  columns = list(rows[0].keys())
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
  # The Markdown table shows mean ± std.
  md_rows = []
  for row in rows:
    md = {"defence": row["defence"], "attack": row["attack"],
          "trials": row["trials"]}
    for k in METRICS:
      md[k] = f"{row[f'{k}_mean']:.4g} ± {row[f'{k}_std']:.2g}"
    for k in row:
      if k.startswith("psnr>=") or k.endswith(("_median", "_min")):
        md[k] = row[k]
    md_rows.append(md)
  table = report.markdown_table(md_rows)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(f"# {cfg.title}\n\n{cfg.description}\n\n{table}")
  figures = {f"{r['defence']} / {r['attack']}":
             f"grid_{r['defence']}_{r['attack']}.png" for r in rows}
  report.write_report(workdir, cfg.title, tables={"Results": md_rows},
                      figures=figures, notes=cfg.description,
                      config=cfg.to_dict())
  print(table)


def main(argv):
  del argv
  cfg = _CONFIG.value
  workdir = launch.study_workdir(_WORKDIR.value, "arrays",
                                 script=__file__, study=cfg.study)
  launch.timed_study(workdir, lambda: summarise(cfg, workdir),
                     lambda: run_all(cfg, workdir))


if __name__ == "__main__":
  launch.run(main, required=("config",))
