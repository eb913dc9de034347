"""`jaxleak dp-audit`: bad flags fail before any work; a small gradient audit runs."""

import json
import os

import pytest

from jaxleak.cli import main as cli_main


@pytest.mark.parametrize("argv, flag", [
    (["--canaries", "1"], "--canaries"),
    (["--epsilon", "0"], "--epsilon"),
    (["--epsilon", "nan"], "--epsilon"),
    (["--delta", "1.5"], "--delta"),
    (["--confidence", "1"], "--confidence"),
    (["--s", "0.5"], "--s"),
    (["--steps", "0"], "--steps"),
    (["--sample-rate", "0"], "--sample-rate"),
    (["--canary-norm", "0.5"], "--canary-norm"),
    (["--method", "clopper_pearson"], "--method"),
    (["--non-private"], "--non-private"),
    (["--mode", "input", "--protocol", "many_runs"], "--protocol"),
    (["--mode", "input", "--non-private", "--broken", "half_noise"], "--broken"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, flag, tmp_path, capsys):
  rc = cli_main.main(["dp-audit", "--workdir", str(tmp_path / "w"), *argv])
  assert rc == 2
  err = capsys.readouterr().err
  assert f"jaxleak dp-audit: error: argument {flag}" in err
  assert not os.path.exists(tmp_path / "w")  # nothing ran


def test_small_gradient_audit_writes_metrics_report_and_histogram(tmp_path):
  work = tmp_path / "audit"
  rc = cli_main.main(["dp-audit", "--rule", "clip", "--epsilon", "8",
                      "--canaries", "200", "--steps", "2", "--background", "4",
                      "--no-progress", "--workdir", str(work)])
  assert rc == 0
  with open(work / "metrics.json") as f:
    m = json.load(f)
  assert m["method"] == "one_run" and m["confidence"] == 0.95
  assert m["epsilon_theory"] == pytest.approx(8.0, abs=0.01)
  assert 0.3 < m["epsilon_lower_bound"] < m["epsilon_theory"]
  assert not m["flagged"] and m["num_in"] + m["num_out"] == 200
  assert os.path.getsize(work / "canary_scores.png") > 10_000
  assert "epsilon_lower_bound" in (work / "report.md").read_text()
