"""Figures, `report.html`, `report.md` and `metrics.json` of an audit run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
import os
from typing import Any

import numpy as np

from jaxleak import report as report_lib
from jaxleak.privacy_audit import html
from jaxleak.privacy_audit import pipeline

__all__ = ("write_audit_report", "summary_rows", "SECTION_TITLES")

SECTION_TITLES = ("Summary", "Models and utility", "Reconstruction risk",
                  "I²F risk ranking", "Membership risk", "Empirical epsilon",
                  "Unlearning", "Configuration")

_ATTACK_LABEL = {"inverting_gradients": "IG", "diffusion_dsg": "DSG"}


def _eps(v: Any) -> float:
  return math.inf if v in (None, "inf", "Infinity") else float(v)


def summary_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """One row per model: utility, reconstruction, membership, audit."""
  recon = {}
  for r in results.get("reconstruction", {}).get("summary", []):
    recon[(r["model"], r["attack"])] = r["psnr_mean"]
  mia = {r["model"]: r for r in results.get("membership", {}).get("attacks",
                                                                   [])}
  emp = {r["model"]: r for r in results.get("empirical_epsilon", {}).get(
      "audits", [])}
  rows = []
  for m in results["models"]["models"]:
    name = m["model"]
    row = {"model": name, "epsilon": _eps(m["epsilon"]),
           "test_accuracy": m["test_accuracy"]}
    for attack, label in _ATTACK_LABEL.items():
      if (name, attack) in recon:
        row[f"{label} PSNR (dB)"] = recon[(name, attack)]
    if name in mia:
      row["loss MIA AUC"] = mia[name]["loss_auc"]
      row["LiRA AUC"] = mia[name]["lira_auc"]
      row["LiRA TPR@0.1%FPR"] = mia[name]["lira_tpr@0.1%fpr"]
    if name in emp:
      row["empirical eps (lower bound)"] = emp[name]["epsilon_lower_bound"]
    rows.append(row)
  return rows


def _privacy_utility(results, path: str) -> str:
  from jaxleak import metrics  # pylint: disable=g-import-not-at-top
  curves: dict[str, tuple[list, list]] = {}
  nonpriv = None
  for m in results["models"]["models"]:
    if "rule" in m:
      xs, ys = curves.setdefault(f"DP ({m['rule']})", ([], []))
      xs.append(float(m["epsilon"]))
      ys.append(float(m["test_accuracy"]))
    else:
      nonpriv = float(m["test_accuracy"])
  lo = min(min(xs) for xs, _ in curves.values())
  hi = max(max(xs) for xs, _ in curves.values())
  curves = {k: (list(np.asarray(xs)[np.argsort(xs)]),
                list(np.asarray(ys)[np.argsort(xs)]))
            for k, (xs, ys) in curves.items()}
  if nonpriv is not None:
    curves["non-private"] = ([lo, hi], [nonpriv, nonpriv])
  return metrics.save_curves(curves, path, xlabel="epsilon (delta fixed)",
                             ylabel="test accuracy",
                             title="privacy-utility trade-off")


def _reconstruction_grid(ctx_images, results, path: str) -> str | None:
  from jaxleak import metrics  # pylint: disable=g-import-not-at-top
  rec = results.get("reconstruction")
  if not rec or not rec["attacks"]:
    return None
  attacks = list(dict.fromkeys(r["attack"] for r in rec["attacks"]))
  models = list(dict.fromkeys(r["model"] for r in rec["attacks"]))
  by = {(r["model"], r["attack"]): r for r in rec["attacks"]
        if r["example"] == 0}
  truth = ctx_images[int(rec["examples"][0])]
  cells, titles, row_labels = [], [], []
  for m in models:
    cells.append(truth)
    titles.append("private")
    for a in attacks:
      r = by[(m, a)]
      cells.append(np.load(r["array"]))
      titles.append(f"{_ATTACK_LABEL.get(a, a)} {r['psnr']:.1f} dB")
    row_labels.append(m)
  return metrics.save_image_grid(np.stack(cells), path,
                                 nrow=len(attacks) + 1, titles=titles,
                                 row_labels=row_labels)


def _i2f_grid(images, results, path: str, show: int = 8) -> str | None:
  from jaxleak import metrics  # pylint: disable=g-import-not-at-top
  rows = results.get("i2f", {}).get("ranking")
  if not rows:
    return None
  show = min(show, len(rows) // 2)
  pick = rows[:show] + rows[-show:]
  cells = np.stack([images[r["index"]] for r in pick])
  titles = [f"#{r['rank']} {r['predicted_rmse']:.2g}" for r in pick]
  return metrics.save_image_grid(
      cells, path, nrow=show, titles=titles,
      row_labels=["most at risk", "least at risk"])


def _roc(curves: Mapping[str, Sequence[Sequence[float]]], path: str,
         title: str) -> str | None:
  from jaxleak.attacks import membership as mia  # pylint: disable=g-import-not-at-top
  if not curves:
    return None
  return mia.save_roc_png({k: (np.asarray(v[0]), np.asarray(v[1]))
                           for k, v in curves.items()}, path, title=title)


def write_audit_report(workdir: str, config: pipeline.AuditConfig,
                       results: Mapping[str, Any], train_images: Any, *,
                       command: str, stage_seconds: Mapping[str, float]
                       ) -> dict[str, str]:
  """Writes figures, report.html, report.md and metrics.json; returns paths."""
  fig = lambda name: os.path.join(workdir, name)
  paths = {"privacy_utility": _privacy_utility(results,
                                               fig("privacy_utility.png"))}
  for key, p in (("reconstruction", _reconstruction_grid(
      train_images, results, fig("reconstruction_grid.png"))),
                 ("i2f", _i2f_grid(train_images, results,
                                   fig("i2f_ranking.png"))),
                 ("membership", _roc(results.get("membership", {}).get(
                     "roc", {}), fig("roc_membership.png"),
                     "membership inference: members vs held-out")),
                 ("unlearning", _roc(results.get("unlearning", {}).get(
                     "roc", {}), fig("roc_unlearning.png"),
                     "loss attack on the forget set after unlearning"))):
    if p is not None:
      paths[key] = p

  rerun = lambda stage: f"{command} --rerun {stage}"
  summary = summary_rows(results)
  models = results["models"]["models"]
  rec = results.get("reconstruction", {})
  i2f = results.get("i2f", {})
  mem = results.get("membership", {})
  emp = results.get("empirical_epsilon", {})
  unl = results.get("unlearning", {})
  cfg = dataclasses.asdict(config)
  nonpriv = next(m for m in models if "rule" not in m)
  sections = [
      html.Section("Summary", text=[
          f"{config.model} on {config.dataset}: the non-private model and "
          f"DP models ({', '.join(config.dp_rules)}) at epsilon "
          f"{', '.join(f'{e:g}' for e in config.dp_epsilons)} (delta "
          f"{config.dp_delta:g}). Each row says how well the model works "
          "(test accuracy) and how much it leaks: PSNR of gradient-inversion "
          "reconstructions of single private examples (higher leaks more), "
          "membership-inference AUC (0.5 is chance) and the empirical "
          "epsilon a canary audit proves for the DP mechanism."],
          tables={"Leakage by model": summary}),
      html.Section("Models and utility", text=[
          f"The non-private model reaches {nonpriv['test_accuracy']:.2%} test "
          "accuracy. DP models spend exactly the epsilon shown (PLD "
          "accountant, Poisson sampling, noise calibrated to the target)."],
          tables={"Models": models},
          figures={"Test accuracy against epsilon": paths["privacy_utility"]},
          command=rerun("models")),
      html.Section("Reconstruction risk", text=[
          "The attacker sees what each training run released at its first "
          "step for a single private training example (the strongest "
          "per-example view, at the initial parameters where inversion "
          "works best): the plain gradient without DP; with DP, the "
          "example's weighted (clipped or scaled) gradient plus Gaussian "
          "noise at that run's noise multiplier. "
          "IG = Inverting Gradients (cosine distance, total variation); DSG "
          "= the diffusion-guided attack with the shipped prior (needs the "
          "[diffusion] extra and a shipped prior for the dataset)."],
          tables={"Mean over examples": rec.get("summary", []),
                  "Every attack": [{k: v for k, v in r.items()
                                    if k != "array"}
                                   for r in rec.get("attacks", [])]},
          figures=({"Private example (left) and reconstructions":
                    paths["reconstruction"]}
                   if "reconstruction" in paths else {}),
          command=rerun("reconstruction")),
      html.Section("I²F risk ranking", text=[
          "I²F predicts, without running an attack, how far a gradient-"
          "matching attack on the first step's gradient lands from each "
          f"training image under gradient noise of "
          f"variance {i2f.get('noise_var', 0):g} (damping eps "
          f"{i2f.get('eps', 0):g}); the smallest predicted RMSE is the most "
          "at risk."],
          tables={"Ranking (most at risk first)": i2f.get("ranking", [])[:10]},
          figures=({"Most and least at-risk training images": paths["i2f"]}
                   if "i2f" in paths else {}),
          command=rerun("i2f")),
      html.Section("Membership risk", text=[
          f"{mem.get('members', 0)} training members against "
          f"{mem.get('nonmembers', 0)} held-out examples. Loss = threshold on "
          f"the loss; LiRA = offline LiRA with {mem.get('shadows', 0)} "
          "non-private shadow models trained on random halves of the pool "
          "(each example is held out by half of them)."],
          tables={"Membership inference": mem.get("attacks", [])},
          figures=({"ROC (log-log)": paths["membership"]}
                   if "membership" in paths else {}),
          command=rerun("membership")),
      html.Section("Empirical epsilon", text=[
          "A gradient-canary audit of each DP model's mechanism (the same "
          "weight rule, noise multiplier, sampling rate and number of "
          "steps): a statistically valid lower bound on epsilon, which must "
          "stay below the accountant's epsilon." if emp.get("available")
          else f"Not run: {emp.get('reason', 'unavailable')}."],
          tables={"Audit": emp.get("audits", [])},
          command=rerun("empirical_epsilon")),
      html.Section("Unlearning", text=[
          f"Mini-Unlearning removes {unl.get('forget_size', 0)} training "
          f"examples ({unl.get('ratio', 0):.0%}) from an SGD-trained model; "
          "retraining without them is the reference. A good unlearner makes "
          "the forget set look like held-out data to the loss attack (AUC "
          "near the retrained model's)."],
          tables={"Unlearning": unl.get("models", [])},
          figures=({"Forget-set loss attack": paths["unlearning"]}
                   if "unlearning" in paths else {}),
          command=rerun("unlearning")),
      html.Section("Configuration", text=[
          "The whole audit: " + command,
          "Stage wall times (s): " + ", ".join(
              f"{k} {v:.1f}" for k, v in stage_seconds.items())],
          tables={"Configuration": [{"field": k, "value": str(v)}
                                    for k, v in cfg.items()]}),
  ]
  assert tuple(s.title for s in sections) == SECTION_TITLES
  paths["html"] = html.write_html(
      os.path.join(workdir, "report.html"),
      f"jaxleak privacy audit: {config.model} on {config.dataset}",
      sections, subtitle="offline, embedded data;")
  paths["metrics"] = report_lib.write_json(
      os.path.join(workdir, "metrics.json"),
      {"summary": summary, "stage_seconds": dict(stage_seconds),
       "results": results, "config": cfg, "command": command})
  paths["md"] = report_lib.write_report(
      workdir, f"jaxleak audit: {config.model} on {config.dataset}",
      tables={"Leakage by model": summary,
              "Reconstruction (mean over examples)": rec.get("summary", []),
              "Membership inference": mem.get("attacks", []),
              "Empirical epsilon": emp.get("audits", []),
              "Unlearning": unl.get("models", [])},
      figures={k.replace("_", " "): v for k, v in paths.items()
               if v.endswith(".png")},
      config={"command": command, **cfg},
      notes="Open report.html for the full report with every section.")
  return paths
