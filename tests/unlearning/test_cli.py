"""`jaxleak unlearn` end to end on digits with logistic regression."""

import argparse
import json

import pytest

from jaxleak.cli import main as cli_main
from jaxleak.cli import unlearn


def _run(argv):
  parser = argparse.ArgumentParser()
  unlearn.register(parser.add_subparsers())
  args = parser.parse_args(["unlearn"] + argv)
  return args.func(args)


def test_unlearn_cli_writes_metrics_and_reuses_history(tmp_path, capsys):
  assert "unlearn" in cli_main.SUBCOMMANDS
  common = ["--dataset", "digits", "--model", "logreg", "--epochs", "3",
            "--batch-size", "128", "--lr", "0.5", "--l2", "1e-2", "--ratio",
            "0.1", "--workdir", str(tmp_path), "--no-progress"]
  assert _run(common + ["--method", "mini_unlearning", "--devices", "2"]) == 0
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["method"] == "mini_unlearning"
  assert set(metrics["models"]) == {"original", "retrain", "mini_unlearning"}
  assert metrics["devices"] == 2
  for key in ("test_accuracy", "forget_accuracy", "distance_to_retrain",
              "wall_time_s", "mia_loss_auc", "mia_loss_tpr_at_1pct_fpr",
              "mia_efficacy"):
    assert key in metrics["models"]["mini_unlearning"]
  assert metrics["retrain/distance_to_retrain"] == 0.0
  assert (tmp_path / "report.md").exists()
  assert (tmp_path / "roc_forget.png").exists()
  capsys.readouterr()
  # A second run reuses the stored model and history.
  assert _run(common + ["--method", "finetune"]) == 0
  assert "reusing the trained model and history" in capsys.readouterr().out
  with pytest.raises(ValueError, match="'--method'"):
    _run(common + ["--method", "sisa"])
  with pytest.raises(ValueError, match="different model, data or recipe"):
    _run(common + ["--lr", "0.25", "--method", "finetune"])
