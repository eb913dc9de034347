"""Tests for jaxleak.runloop: identity, corrupt checkpoints, wall time, workdirs.

A tiny counter job (state = one array, step adds the step number) keeps these
fast; `tests/cli/test_cli.py` drives the same loop through `jaxleak train`.
"""

import glob
import os
import time

import jax
import numpy as np
import pytest

from jaxleak import checkpoint
from jaxleak import data
from jaxleak import models
from jaxleak import runloop
from jaxleak import training
from jaxleak.cli import main as cli_main


def _step(step, state, aux):
  aux["visited"] = aux.get("visited", []) + [step]
  return {"x": state["x"] + step}, aux, {"x": float(state["x"][0])}


def _loop(tmp_path, total=6, identity=None, **kw):
  return runloop.RunLoop("count", total,
                         checkpoint_dir=tmp_path / "checkpoints",
                         identity=identity or {"job": "count"},
                         checkpoint_every=2, progress=False, **kw)


def _run(tmp_path, total=6, step_fn=_step, **kw):
  with _loop(tmp_path, total, **kw) as loop:
    state, aux = loop.restore({"x": np.zeros(3, np.float32)}, {})
    return loop.run(step_fn, state, aux)


def _truncate(step_dir):
  for path in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True):
    if os.path.isfile(path) and os.path.getsize(path) > 1:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_preempted_run_resumes_to_the_same_state_and_aux(tmp_path):
  straight = _run(tmp_path / "a")
  with pytest.raises(runloop.Preempted):
    _run(tmp_path / "b", stop_after=3)
  resumed = _run(tmp_path / "b")
  assert resumed.resumed_from == 3
  assert resumed.step == straight.step == 6
  np.testing.assert_array_equal(resumed.state["x"], straight.state["x"])
  np.testing.assert_array_equal(straight.state["x"], [15.0] * 3)
  assert resumed.aux == straight.aux == {"visited": [0, 1, 2, 3, 4, 5]}


def test_resuming_says_so_when_it_happens_and_a_finished_rerun_does_not(
    tmp_path, capfd):
  with pytest.raises(runloop.Preempted):
    _run(tmp_path, stop_after=3)
  capfd.readouterr()
  _run(tmp_path)
  err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
  assert err == [f"count: resuming from checkpoint step 3 of 6 in "
                 f"{tmp_path / 'checkpoints'}"]
  _run(tmp_path)  # finished: nothing to resume
  assert capfd.readouterr().err.strip() == ""


# Issue 12: wall time is the total over resumed segments; a finished rerun
# adds nothing to it.
def test_wall_time_is_summed_over_segments_and_kept_by_a_finished_rerun(
    tmp_path):
  def slow(step, state, aux):
    time.sleep(0.05)
    return _step(step, state, aux)

  with pytest.raises(runloop.Preempted):
    _run(tmp_path, step_fn=slow, stop_after=3)
  resumed = _run(tmp_path, step_fn=slow)
  # Each segment slept 3 x 0.05 s; the total holds both.
  assert resumed.segment_wall_time_s >= 0.15
  assert resumed.wall_time_s >= resumed.segment_wall_time_s + 0.15
  again = _run(tmp_path, step_fn=slow)
  assert again.segment_wall_time_s == 0.0
  assert again.wall_time_s == pytest.approx(resumed.wall_time_s, abs=1e-9)


def _digits_mlp(hidden):
  train, test = data.load("digits", "train"), data.load("digits", "test")
  apply_fn, params = models.create("mlp", train.num_classes, train.image_shape,
                                   jax.random.key(0), hidden=hidden)
  return apply_fn, params, train, test


# Issue 12 (a finished rerun keeps the total) and issue 9 (a different model
# in the workdir is a different run, not a corrupt checkpoint).
def test_finished_rerun_keeps_wall_time_and_other_model_is_another_run(
    tmp_path):
  config = training.TrainConfig(epochs=1, batch_size=128, seed=0)
  apply_fn, params, train, test = _digits_mlp((16,))
  first = training.train_classifier(apply_fn, params, train, test, config,
                                    workdir=tmp_path, progress=False,
                                    run_info={"model": "mlp16"})
  rerun = training.train_classifier(apply_fn, params, train, test, config,
                                    workdir=tmp_path, progress=False,
                                    run_info={"model": "mlp16"})
  assert first.wall_time_s > 0.01
  assert rerun.wall_time_s == pytest.approx(first.wall_time_s, abs=1e-9)
  assert rerun.test_accuracy == first.test_accuracy

  other_apply, other_params, _, _ = _digits_mlp((32, 8))
  with pytest.raises(runloop.DifferentRunError) as err:
    training.train_classifier(other_apply, other_params, train, test, config,
                              workdir=tmp_path, progress=False,
                              run_info={"model": "mlp32x8"})
  message = str(err.value)
  assert "holds a different run" in message and "run.model" in message
  assert "corrupt" not in message and "\n" not in message
  # Nothing was deleted: the first run's checkpoint is still there.
  with checkpoint.Checkpointer(tmp_path / "checkpoints") as ckpt:
    assert ckpt.latest_step == first.steps


# Issue 8: a truncated newest checkpoint is skipped with one line naming it;
# all truncated is one error naming the steps and what to do.
def test_truncated_newest_checkpoint_is_skipped_with_one_line(tmp_path,
                                                               capfd):
  _run(tmp_path, total=6)
  _truncate(str(tmp_path / "checkpoints" / "6"))
  capfd.readouterr()
  with _loop(tmp_path) as loop:
    state, _ = loop.restore({"x": np.zeros(3, np.float32)}, {})
  err = capfd.readouterr().err
  assert loop.resumed_from == 4
  np.testing.assert_array_equal(state["x"], [6.0] * 3)  # 0+1+2+3
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1, err
  assert "checkpoint(s) 6" in lines[0] and "resuming from step 4" in lines[0]


def test_every_checkpoint_truncated_names_the_steps_and_the_fix(tmp_path,
                                                                capfd):
  _run(tmp_path, total=6)
  for step_dir in glob.glob(str(tmp_path / "checkpoints" / "[0-9]*")):
    _truncate(step_dir)
  capfd.readouterr()
  with (pytest.raises(checkpoint.CorruptCheckpointError) as err,
        _loop(tmp_path) as loop):
    loop.restore({"x": np.zeros(3, np.float32)}, {})
  message = str(err.value)
  assert "every checkpoint" in message and "steps 2, 4, 6" in message
  assert f"delete {tmp_path / 'checkpoints'}" in message
  assert "\n" not in message
  assert "Traceback" not in capfd.readouterr().err


# Issue 7: a checkpoint that cannot be written says what failed and what is
# kept, as one line from the CLI.
def test_failed_checkpoint_write_names_the_step_and_the_kept_one(
    tmp_path, monkeypatch, capsys):
  real_save = checkpoint.Checkpointer.save

  def failing_save(self, step, state, metadata=None):
    if step > 10:
      raise checkpoint.CheckpointError(
          f"could not write checkpoint step {step} to {self.step_path(step)}:"
          " [Errno 28] No space left on device")
    return real_save(self, step, state, metadata)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", failing_save)
  code = cli_main.main(["train", "--model", "mlp", "--dataset", "digits",
                        "--epochs", "1", "--batch-size", "64",
                        "--checkpoint-every", "10", "--no-progress",
                        "--workdir", str(tmp_path)])
  err = capsys.readouterr().err
  assert code == 2
  assert err.count("\n") == 1 and "Traceback" not in err
  assert "could not write checkpoint step 20" in err
  assert "No space left on device" in err
  assert "the last good checkpoint, step 10, is kept" in err


# Issue 6: an unusable workdir is a one-line error before any work.
def test_workdir_under_a_file_is_refused_before_data_loads(tmp_path,
                                                           monkeypatch,
                                                           capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")

  def no_loading(*args, **kwargs):
    raise AssertionError("data loaded before the workdir was checked")

  monkeypatch.setattr(data, "load", no_loading)
  for cmd in (["train"], ["train-dp"], ["train-prior", "--resolution", "8"]):
    code = cli_main.main(cmd + ["--workdir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2, cmd
    assert err.startswith(f"jaxleak {cmd[0]}: error: --workdir "), err
    assert "is a file, not a folder" in err and err.count("\n") == 1
  with pytest.raises(ValueError, match="is a file, not a folder"):
    runloop.prepare_workdir(blocker)


# Issue 13: a failed run leaves no empty workdir; the report shows the
# default workdir, not null.
def test_failed_run_leaves_no_empty_workdir(tmp_path, capsys):
  workdir = tmp_path / "new" / "run"
  code = cli_main.main(["train", "--dataset", "no_such_dataset_xyz",
                        "--data-dir", str(tmp_path / "empty"),
                        "--workdir", str(workdir)])
  assert code == 2 and "no_such_dataset_xyz" in capsys.readouterr().err
  assert not workdir.exists()


def test_report_config_shows_the_default_workdir(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  code = cli_main.main(["train", "--model", "mlp", "--dataset", "digits",
                        "--epochs", "1", "--batch-size", "128",
                        "--no-progress"])
  assert code == 0
  report_md = (tmp_path / "runs" / "train-mlp-digits" / "report.md").read_text()
  assert '"workdir": "runs/train-mlp-digits"' in report_md
  assert '"workdir": null' not in report_md


def _redraws(err: str, name: str) -> list[str]:
  """The progress bar's redraws in captured stderr (each a line in a log)."""
  return [s for s in err.replace("\r", "\n").split("\n")
          if s.startswith(f"{name}:")]


def test_progress_bar_redraws_at_most_once_a_second_with_the_rate(capsys):
  """Item 15(a): a log gets a redraw a second, not one per step; item 14:
  each redraw shows the rate in steps per second."""
  def slow_step(step, state, aux):
    time.sleep(0.03)
    return state, aux, {"step": step}  # the postfix never forces a redraw

  loop = runloop.RunLoop("slow", 60, progress=True)
  t0 = time.perf_counter()
  loop.run(slow_step, {"x": np.zeros(1)}, {})
  elapsed = time.perf_counter() - t0
  lines = _redraws(capsys.readouterr().err, "slow")
  # Once when it opens, at most once per PROGRESS_INTERVAL_S, once to close;
  # 60 steps of >= 30 ms would give >= 18 redraws at tqdm's default 0.1 s.
  assert runloop.PROGRESS_INTERVAL_S >= 1.0
  assert 2 <= len(lines) <= elapsed / runloop.PROGRESS_INTERVAL_S + 3, lines
  assert "60/60" in lines[-1] and "step/s" in lines[-1], lines[-1]
