"""`jaxleak train-dp` end to end (in-process, a few steps on digits)."""

import os
import re

from jaxleak.cli import main as cli_main

# tqdm writes the rate as "7.31step/s", or "1.36s/step" below one step/s.
RATE = re.compile(r"\d+(\.\d+)?(step/s|s/step)")


def test_train_dp_progress_bar_shows_steps_per_second(tmp_path, capsys):
  """Item 14: the train-dp bar shows the rate (step/s) next to its postfix."""
  workdir = tmp_path / "dp"
  assert cli_main.main([
      "train-dp", "--rule", "clip", "--model", "mlp", "--dataset", "digits",
      "--epochs", "0.3", "--batch-size", "64", "--noise-multiplier", "1",
      "--devices", "1", "--workdir", str(workdir)]) == 0
  out, err = capsys.readouterr()
  bar = [s for s in err.replace("\r", "\n").split("\n")
         if s.startswith("dp-clip:")]
  assert bar, err
  final = bar[-1]
  assert "7/7" in final and RATE.search(final), final
  assert "eps=" in final and "test_acc=" in final, final
  # The completion line names every file the run wrote.
  written = sorted(os.listdir(workdir))
  assert [f for f in written if f != "checkpoints" and f not in out] == [], out
