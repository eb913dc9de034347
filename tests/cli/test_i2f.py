"""`jaxleak i2f` on a tiny configuration (in-process, a few images)."""

import csv
import json
import math

import jax
import numpy as np

from jaxleak import data
from jaxleak import influence
from jaxleak import models
from jaxleak.cli import main as cli_main
from jaxleak.influence import audit


def _args(workdir, *extra):
  return ["i2f", "--model", "mlp", "--dataset", "digits", "--n", "4",
          "--noise-var", "1e-3", "--probes", "2", "--attack-steps", "5",
          "--seed", "3", "--no-progress", "--fast-compile", "--workdir", str(workdir), *extra]


def test_i2f_cli_writes_ranked_risk_table_and_figures(tmp_path):
  assert cli_main.main(_args(tmp_path)) == 0
  for name in ("risk.csv", "scatter.png", "ranked_grid.png", "report.md",
               "metrics.json"):
    assert (tmp_path / name).stat().st_size > 0, name
  rows = list(csv.DictReader(open(tmp_path / "risk.csv")))
  assert len(rows) == 4
  pred = [float(r["predicted_rmse"]) for r in rows]
  assert pred == sorted(pred) and [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
  assert all(math.isfinite(float(r["attack_rmse"])) for r in rows)
  # Stratified: four different classes.
  assert len({r["label"] for r in rows}) == 4
  # Recompute one row's I²F with the library from the documented recipe.
  ds = data.load("digits", "test")
  indices = audit.stratified_indices(ds.labels, 4, 3)
  apply_fn, params = models.create("mlp", ds.num_classes, ds.image_shape,
                                   jax.random.key(3))
  pos = 2
  idx = int(indices[pos])
  row = next(r for r in rows if int(r["index"]) == idx)
  delta = audit.gaussian_perturbation(
      params, math.sqrt(1e-3), jax.random.fold_in(jax.random.key(3), pos))
  norm, _ = influence.i2f(apply_fn, params, ds.images[idx:idx + 1],
                          ds.labels[idx:idx + 1], delta, eps=1e-3)  # CLI default
  np.testing.assert_allclose(float(row["i2f"]), float(norm), rtol=1e-4)
  np.testing.assert_allclose(float(row["predicted_rmse"]), float(norm) / 8.0,
                             rtol=1e-4)
  summary = json.load(open(tmp_path / "metrics.json"))["summary"]
  assert -1.0 <= summary["pearson"] <= 1.0
  assert "I²F audit" in open(tmp_path / "report.md").read()


def test_i2f_cli_without_attack_and_bad_arguments(tmp_path, capsys):
  assert cli_main.main(_args(tmp_path, "--attack", "none")) == 0
  rows = list(csv.DictReader(open(tmp_path / "risk.csv")))
  assert "attack_rmse" not in rows[0]
  assert all(float(r["expected_rmse"]) > 0 for r in rows)
  assert cli_main.main(_args(tmp_path / "bad", "--noise-var", "0")) == 2
  assert "--noise-var" in capsys.readouterr().err
  assert cli_main.main(_args(tmp_path / "bad", "--eps", "-1")) == 2
  assert "--eps" in capsys.readouterr().err
  # A usage error returns 2 like any other bad input (no SystemExit).
  assert cli_main.main(_args(tmp_path / "bad", "--attack", "gan")) == 2
  assert "--attack" in capsys.readouterr().err
