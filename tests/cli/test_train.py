"""`jaxleak train` output (in-process, a tiny MLP on digits)."""

import contextlib
import io
import os
import time

import pytest

from jaxleak.cli import main as cli_main

EPOCHS, BATCH = 3, 16
STEPS = EPOCHS * (1438 // BATCH)  # digits' train split; drop_remainder


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
  """(stdout, stderr, workdir, seconds) of a 267-step run, progress bar on."""
  workdir = tmp_path_factory.mktemp("train") / "run"
  out, err = io.StringIO(), io.StringIO()
  t0 = time.perf_counter()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli_main.main([
        "train", "--model", "mlp", "--dataset", "digits", "--epochs",
        str(EPOCHS), "--batch-size", str(BATCH), "--workdir", str(workdir)])
  assert code == 0, err.getvalue()
  return out.getvalue(), err.getvalue(), workdir, time.perf_counter() - t0


def test_train_logs_a_few_lines_not_one_per_step(train_run):
  """Item 15(a): stdout has a handful of lines and the bar (stderr, where a
  log file turns each redraw into a line) redraws about once a second."""
  out, err, _, seconds = train_run
  assert len(out.splitlines()) <= 4, out
  redraws = [s for s in err.replace("\r", "\n").split("\n")
             if s.startswith("train:")]
  assert f"{STEPS}/{STEPS}" in redraws[-1], redraws[-1]
  assert len(redraws) <= seconds + 3 and len(redraws) < STEPS / 10, redraws


def test_train_completion_message_names_every_file_it_wrote(train_run):
  """Item 15(b): every file in the workdir (but checkpoints/) is in stdout."""
  out, _, workdir, _ = train_run
  written = sorted(f for f in os.listdir(workdir) if f != "checkpoints")
  assert {"metrics.json", "report.md"} <= set(written), written
  last = out.splitlines()[-1]
  assert [f for f in written if f not in last] == [], last
