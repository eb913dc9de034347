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


def test_unlearn_defaults_train_an_mlp_on_digits_to_a_sensible_accuracy(
    tmp_path, capsys):
  """The default recipe used to leave this MLP at 55% test accuracy.

  Also checks the report: every method that ran, and both speedups with
  their definitions.
  """
  argv = ["--dataset", "digits", "--model", "mlp", "--method", "finetune",
          "--ratio", "0.3", "--no-step-cache",
          "--workdir", str(tmp_path), "--no-progress"]
  assert _run(argv) == 0
  out = capsys.readouterr()
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["original_test_accuracy"] > 0.9
  assert metrics["models"]["retrain"]["test_accuracy"] > 0.9
  assert metrics["linear_probe_accuracy"] > 0.9
  assert "warning" not in out.err
  assert "original model: test accuracy" in out.out
  assert metrics["methods"] == "original, retrain, finetune"
  report_md = (tmp_path / "report.md").read_text()
  assert "speedup_end_to_end" in report_md and "run_time_s" in report_md
  assert "compilation excluded" in report_md
  assert "compilation included" in report_md
  assert "vs retrain without compilation" in out.out
  # The same workdir with another activation is a different run.
  with pytest.raises(ValueError, match="different model, data or recipe"):
    _run(argv + ["--act", "sigmoid"])


def test_unlearn_warns_when_the_original_model_is_far_below_a_linear_probe(
    tmp_path, capsys):
  argv = ["--dataset", "digits", "--model", "logreg", "--epochs", "3",
          "--lr", "1e-4", "--method", "finetune", "--no-step-cache",
          "--workdir", str(tmp_path), "--no-progress"]
  assert _run(argv) == 0
  err = capsys.readouterr().err
  assert "warning: the original model reaches" in err
  assert "linear classifier" in err


def test_another_model_or_a_damaged_history_is_one_line_naming_the_fix(
    tmp_path, capsys):
  # Seen in the CLI matrix: --model mlp into a logreg workdir failed with
  # "Too few leaves for PyTreeDef", and a truncated step cache with no advice.
  workdir = tmp_path / "run"
  base = ["unlearn", "--dataset", "digits", "--epochs", "3", "--method",
          "finetune", "--ratio", "0.1", "--no-progress", "--workdir",
          str(workdir)]
  assert cli_main.main(base + ["--model", "logreg"]) == 0
  capsys.readouterr()
  assert cli_main.main(base + ["--model", "mlp"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"jaxleak unlearn: error: unlearn: --workdir {str(workdir)!r} "
                 "holds the history of a different model, data or recipe; "
                 "use a new --workdir, or delete this one to start over"]
  steps = sorted((workdir / "history" / "steps").iterdir(),
                 key=lambda p: int(p.name))
  for path in steps[-1].rglob("*"):
    if path.is_file() and path.stat().st_size > 1:
      with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
  assert cli_main.main(base + ["--model", "logreg"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  history = workdir / "history"
  assert err[0].startswith(
      f"jaxleak unlearn: error: unlearn: the training history in {history} "
      f"is damaged (checkpoint step {steps[-1].name} ")
  assert err[0].endswith(f"delete {history} to train it again")
