"""Every subcommand checks its --workdir first, and names it by the flag.

In-process through `jaxleak.cli.main.main`: an unusable folder fails in
`runloop.workdir_guard` before any data, prior or model loads, so each case
costs milliseconds (a command that skipped the guard would load data and
end in an OSError traceback instead).
"""

import os

import numpy as np
import pytest

from jaxleak import runloop
from jaxleak.cli import main as cli_main

# Each command with the fewest flags that pass its own argument checks.
COMMANDS = [
    ["train"],
    ["train-dp"],
    ["train-prior"],
    ["sample-prior", "--prior", "mnist"],
    ["unlearn"],
    ["attack"],
    ["i2f"],
    ["dp-audit"],
    ["audit", "--quick"],
]


def _ids(cases):
  return [c[0] for c in cases]


@pytest.mark.parametrize("argv", COMMANDS, ids=_ids(COMMANDS))
def test_workdir_under_a_file_is_one_line_naming_the_flag(tmp_path, capsys,
                                                          argv):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a folder\n")
  workdir = a_file / "run"
  assert cli_main.main(argv + ["--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err.strip()
  assert err == (f"jaxleak {argv[0]}: error: --workdir {str(workdir)!r} "
                 f"cannot be created: {a_file} is a file, not a folder")


@pytest.mark.parametrize("argv", COMMANDS, ids=_ids(COMMANDS))
def test_read_only_workdir_is_one_line_naming_the_flag(tmp_path, capsys, argv):
  if os.geteuid() == 0:  # root ignores permission bits: a read-only fs
    workdir = "/sys/jaxleak_test_read_only"
    if not os.path.isdir("/sys"):
      pytest.skip("no read-only /sys to write into")
  else:
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    workdir = str(read_only / "run")
  assert cli_main.main(argv + ["--workdir", workdir]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith(
      f"jaxleak {argv[0]}: error: --workdir {workdir!r} is not writable: ")


@pytest.mark.parametrize("argv", [
    ["attack", "--dataset", "no_such_dataset"],
    ["i2f", "--dataset", "no_such_dataset"],
    ["sample-prior", "--prior", "no_such_prior"],
], ids=lambda a: a[0])
def test_a_failed_run_leaves_no_empty_workdir(tmp_path, capsys, argv):
  workdir = tmp_path / "run"
  assert cli_main.main(argv + ["--workdir", str(workdir)]) == 2
  assert "no_such" in capsys.readouterr().err
  assert not workdir.exists()


def _step(step, state, aux):
  del step
  return {"x": state["x"] + 1.0}, aux, {}


def _run(workdir, identity):
  with runloop.RunLoop("train", 2, checkpoint_dir=os.path.join(
      workdir, "checkpoints"), identity=identity, progress=False) as loop:
    loop.restore({"x": np.zeros(2, np.float32)})
    return loop.run(_step)


def test_different_run_is_named_by_the_cli_flag_inside_the_guard(tmp_path):
  workdir = str(tmp_path / "run")
  with runloop.workdir_guard(workdir):
    assert _run(workdir, {"model": "mlp"}).step == 2
    with pytest.raises(runloop.DifferentRunError) as cli_error:
      _run(workdir, {"model": "lenet"})
  assert str(cli_error.value) == (
      f"train: --workdir {workdir!r} holds a different run (differs in: "
      "model); use a new workdir, or delete this one to start over")
  # Outside a command the library names its own argument.
  with pytest.raises(runloop.DifferentRunError) as lib_error:
    _run(workdir, {"model": "lenet"})
  assert f"argument 'workdir'={workdir!r} holds a different run" in str(
      lib_error.value)
  # A sub-folder of the guarded workdir (e.g. dp-audit's train/).
  with runloop.workdir_guard(workdir):
    assert runloop.describe_workdir(os.path.join(workdir, "train")) == (
        f"--workdir {workdir!r} (its train/ folder)")


def test_train_into_another_models_workdir_names_the_flag(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  base = ["train", "--dataset", "digits", "--epochs", "1", "--batch-size",
          "512", "--no-progress", "--workdir", workdir]
  assert cli_main.main(base + ["--model", "mlp"]) == 0
  capsys.readouterr()
  assert cli_main.main(base + ["--model", "lenet"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith(
      f"jaxleak train: error: train: --workdir {workdir!r} holds a different "
      "run (differs in: ")
  assert "run.model" in err[0]


@pytest.mark.parametrize("command,target,expected", [
    ("i2f", "jaxleak.cli.i2f._i2f",
     "jaxleak i2f: interrupted; nothing was saved (this command keeps no "
     "checkpoints): rerun it to start over"),
    ("attack", "jaxleak.cli.attack._attack",
     "jaxleak attack: interrupted; nothing was saved (this command keeps no "
     "checkpoints): rerun it to start over"),
    ("unlearn", "jaxleak.cli.unlearn._unlearn",
     "jaxleak unlearn: interrupted; rerun the same command to resume from "
     "the last checkpoint"),
])
def test_sigint_outside_a_run_loop_says_what_a_rerun_does(
    tmp_path, capsys, monkeypatch, command, target, expected):
  def interrupted(*args, **kwargs):
    del args, kwargs
    raise KeyboardInterrupt
  monkeypatch.setattr(target, interrupted)
  argv = [command, "--workdir", str(tmp_path / "run")]
  assert cli_main.main(argv) == 130
  assert capsys.readouterr().err.strip() == expected


# A command whose work is one long native call (sample-prior's DDIM loop is
# one jitted scan) ignored Ctrl-C until the call ended: the CLI matrix's
# sample-prior SIGINT cell was "no exit within 60 s".
_STUCK = r"""
import signal
import sys
# Ctrl-C as a shell leaves it for a command, which Python turns into
# KeyboardInterrupt. Set here, not in a preexec_fn (which forks a
# multithreaded test process): the test worker may ignore SIGINT, and an
# ignored signal stays ignored across exec.
signal.signal(signal.SIGINT, signal.default_int_handler)
import jax
from jax import lax
from jaxleak.cli import i2f
from jaxleak.cli import main as cli_main

def loop(n, body, init):
  return lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, body(c[1])),
                        (0, init))[1]

@jax.jit
def spin(n):  # n * 2**30 iterations: minutes, in one native call
  return loop(n, lambda x: loop(2**30, lambda y: y * 1.0001, x), 1.0)

def stuck(args, workdir):
  jax.block_until_ready(spin(0))  # compiled; the next call runs for minutes
  print("spinning", flush=True)
  jax.block_until_ready(spin(1000))
  return 0

i2f._i2f = stuck
cli_main.run(["i2f", "--workdir", sys.argv[1]])  # the console script
"""


def test_sigint_ends_a_command_without_checkpoints_inside_native_code(
    tmp_path):
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, XLA_FLAGS="")
  # A user's shell starts the command with Ctrl-C at its default action
  # (_STUCK restores it); the test worker's own disposition must not leak in.
  proc = subprocess.Popen(
      [sys.executable, "-c", _STUCK, str(tmp_path / "run")], env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "spinning"
    time.sleep(0.5)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    try:
      _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
      proc.kill()
      _, err = proc.communicate()
      raise AssertionError(f"no exit within 30 s of SIGINT; stderr: {err}") from None
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130
  assert time.time() - t0 < 15  # the watcher waits 1 s, then exits
  assert err.strip().splitlines()[-1] == (
      "jaxleak i2f: interrupted; nothing was saved (this command keeps no "
      "checkpoints): rerun it to start over")
  assert "Traceback" not in err
