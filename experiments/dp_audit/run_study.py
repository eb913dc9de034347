"""Runs the empirical DP audit grid and writes tables and a plot.

Thin launcher over `jaxleak.auditing`. Each finished cell is appended to
`results.jsonl`, so an interrupted study resumes by rerunning the command.
See configs/study.py.
"""

import json
import os
import time

from absl import flags

from jaxleak import launch

_CONFIG, _WORKDIR = launch.define_config_flags(workdir_default="runs/dp_audit")
_SUMMARISE_ONLY = flags.DEFINE_bool(
    "summarise_only", False,
    "rebuild results.md/csv and the plot from results.jsonl (and finished "
    "input-canary folders) without running anything, e.g. while several "
    "processes share one workdir with their own --config.protocols")


def gradient_cells(cfg):
  """(key, rule, epsilon, protocol, broken) for every gradient-canary audit."""
  cells = []
  for protocol in cfg.protocols:
    for rule in cfg.rules:
      for eps in cfg.epsilons:
        cells.append((rule, float(eps), protocol, "none"))
    for broken in cfg.broken:
      for rule in cfg.broken_rules:
        for eps in cfg.broken_epsilons:
          cells.append((rule, float(eps), protocol, broken))
  return [(f"gradient/{r}/eps{e:g}/{p}/{b}", r, e, p, b) for r, e, p, b in cells]


def run_gradient_cell(cfg, background, rule_name, eps, protocol, broken):
  from jaxleak import dp_training  # pylint: disable=g-import-not-at-top
  from jaxleak.auditing import estimators  # pylint: disable=g-import-not-at-top
  from jaxleak.auditing import gradient_canaries as gc  # pylint: disable=g-import-not-at-top
  from jaxleak.dp import accounting  # pylint: disable=g-import-not-at-top
  rule = dp_training.make_weight_rule(rule_name, s=cfg.psasc_s)
  sigma = accounting.calibrate_noise(eps, sample_rate=cfg.sample_rate,
                                     steps=cfg.steps, delta=cfg.delta)
  eps_theory = accounting.epsilon(noise_multiplier=sigma,
                                  sample_rate=cfg.sample_rate, steps=cfg.steps,
                                  delta=cfg.delta)
  gcfg = gc.GradientAuditConfig(steps=cfg.steps, sample_rate=cfg.sample_rate,
                                broken=broken)
  sim = gc.simulate_one_run if protocol == "one_run" else gc.simulate_many_runs
  start = time.perf_counter()
  ins, outs = sim(rule, sigma, background, num_canaries=cfg.canaries,
                  key=cfg.seed, config=gcfg)
  methods = (("one_run",) if protocol == "one_run"
             else ("clopper_pearson", "gdp"))
  row = {"mode": "gradient", "rule": rule_name, "protocol": protocol,
         "broken": broken, "epsilon_target": eps, "epsilon_theory": eps_theory,
         "noise_multiplier": sigma, "canaries": cfg.canaries,
         "attack_auroc": estimators.attack_auroc(ins, outs)}
  for m in methods:
    b = estimators.epsilon_lower_bound(ins, outs, method=m, delta=cfg.delta,
                                       confidence=cfg.confidence)
    row[f"bound_{m}"] = b
    row[f"ratio_{m}"] = b / eps_theory
  row["flagged"] = any(row[f"bound_{m}"] > eps_theory for m in methods)
  row["wall_s"] = time.perf_counter() - start
  return row


def run_input_cell(cfg, workdir, private):
  from jaxleak.cli import main as cli_main  # pylint: disable=g-import-not-at-top
  sub = os.path.join(workdir, "input_dp" if private else "input_nonprivate")
  argv = ["dp-audit", "--mode", "input", "--canaries", str(cfg.input_canaries),
          "--delta", str(cfg.delta), "--seed", str(cfg.seed), "--workdir", sub]
  argv += (["--rule", cfg.input_rule, "--epsilon", str(cfg.input_epsilon)]
           if private else ["--non-private"])
  done = os.path.exists(os.path.join(sub, "metrics.json"))
  if not done and cli_main.main(argv) != 0:
    raise RuntimeError(f"dp-audit failed: {argv}")
  with open(os.path.join(sub, "metrics.json")) as f:
    m = json.load(f)
  return {"mode": "input", "rule": cfg.input_rule if private else "non-private",
          "protocol": "one_run", "broken": "none",
          "epsilon_target": cfg.input_epsilon if private else float("inf"),
          "epsilon_theory": m["epsilon_theory"], "canaries": m["num_canaries"],
          "bound_one_run": m["epsilon_lower_bound"],
          "ratio_one_run": m["tightness"], "attack_auroc": m["attack_auroc"],
          "test_accuracy": m["test_accuracy"], "flagged": m["flagged"]}


def summarise(rows, workdir, cfg):
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  grad = [r for r in rows if r["mode"] == "gradient"]
  table = {}
  for r in grad:
    k = (r["rule"], r["epsilon_target"], r["broken"])
    t = table.setdefault(k, {"rule": r["rule"], "broken": r["broken"],
                             "epsilon_theory": r["epsilon_theory"]})
    for m in ("one_run", "clopper_pearson", "gdp"):
      if f"bound_{m}" in r:
        t[m] = r[f"bound_{m}"]
        t[f"{m}/theory"] = r[f"ratio_{m}"]
    t["flagged"] = t.get("flagged", False) or r["flagged"]
  cols = ["rule", "broken", "epsilon_theory", "one_run", "one_run/theory",
          "clopper_pearson", "clopper_pearson/theory", "gdp", "gdp/theory",
          "flagged"]
  tab = [{c: t.get(c, "") for c in cols} for t in table.values()]
  inp = [r for r in rows if r["mode"] == "input"]
  md = ["# Empirical DP audit (jaxleak dp-audit)\n",
        (f"Gradient canaries: {cfg.canaries} canaries (one run) or {cfg.canaries} "
         f"independent runs (Clopper-Pearson, GDP); {cfg.steps} full-batch steps, "
         f"{cfg.background} real per-example gradients of {cfg.model} on "
         f"{cfg.dataset}; delta {cfg.delta:g}, confidence {cfg.confidence:g}.\n"),
        report.markdown_table(tab, cols)]
  if inp:
    md += ["\n## Input canaries (black-box, mislabelled mnist_subset, cnn_mnist)\n",
           report.markdown_table(inp, ["rule", "epsilon_theory", "canaries",
                                       "bound_one_run", "attack_auroc",
                                       "test_accuracy"])]
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(md))
  import csv  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=cols)
    w.writeheader()
    w.writerows(tab)
  _plot(table, os.path.join(workdir, "bound_vs_theory.png"))


def _plot(table, path):
  from jaxleak.metrics import figures  # pylint: disable=g-import-not-at-top
  fig = figures.new_figure((6.4, 4.8), 120)
  ax = fig.subplots()
  marks = {"one_run": "o", "clopper_pearson": "s", "gdp": "^"}
  colors = {"none": "tab:blue", "half_noise": "tab:red",
            "half_sensitivity": "tab:orange"}
  seen = set()
  for t in table.values():
    for m, mk in marks.items():
      if m in t:
        label = f"{m}, {t['broken']}"
        ax.scatter(t["epsilon_theory"], t[m], marker=mk,
                   color=colors[t["broken"]], alpha=0.7,
                   label=None if label in seen else label)
        seen.add(label)
  hi = max(max(t["epsilon_theory"] for t in table.values()),
           max(t.get(m, 0) for t in table.values() for m in marks)) * 1.05
  ax.plot([0, hi], [0, hi], "k--", lw=1, label="bound = theory")
  ax.set_xlabel("accountant's (claimed) epsilon")
  ax.set_ylabel("audited epsilon lower bound")
  ax.set_title("Gradient-canary audit: above the diagonal = broken", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  figures.save_figure(fig, path, 120)


def main(argv):
  del argv
  cfg = _CONFIG.value
  workdir = launch.study_workdir(_WORKDIR.value)
  import jax  # pylint: disable=g-import-not-at-top

  from jaxleak import data  # pylint: disable=g-import-not-at-top
  from jaxleak import models  # pylint: disable=g-import-not-at-top
  from jaxleak import report  # pylint: disable=g-import-not-at-top
  from jaxleak.auditing import gradient_canaries as gc  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "results.jsonl")
  rows = report.read_jsonl(path)
  done = {r["key"] for r in rows}
  cells = gradient_cells(cfg)
  background = None
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  for key, rule, eps, protocol, broken in tqdm(cells, desc="audit cells"):
    if key in done or _SUMMARISE_ONLY.value:
      continue
    if background is None:
      train = data.load(cfg.dataset, "train")
      apply_fn, params = models.create(cfg.model, train.num_classes,
                                       train.image_shape, jax.random.key(cfg.seed))
      background = gc.background_gradients(
          apply_fn, params, train.images[:cfg.background],
          train.labels[:cfg.background])
    row = {"key": key, **run_gradient_cell(cfg, background, rule, eps,
                                           protocol, broken)}
    report.append_jsonl(path, row)
    rows.append(row)
    print(json.dumps(row))
  if cfg.input_canaries:
    for private in (False, True):
      key = f"input/{'dp' if private else 'nonprivate'}"
      sub = os.path.join(workdir, "input_dp" if private else "input_nonprivate")
      finished = os.path.exists(os.path.join(sub, "metrics.json"))
      if key not in done and (finished or not _SUMMARISE_ONLY.value):
        row = {"key": key, **run_input_cell(cfg, workdir, private)}
        report.append_jsonl(path, row)
        rows.append(row)
        print(json.dumps(row))
  summarise(rows, workdir, cfg)
  print(f"wrote {workdir}/results.md")


if __name__ == "__main__":
  launch.run(main, required=("config",))
