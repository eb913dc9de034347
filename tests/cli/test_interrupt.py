"""SIGINT mid-run: `jaxleak train` saves the interrupted step, exits 130, resumes.

Runs the console script as a subprocess (a real signal to a real process),
like `test_cli.py`'s SIGKILL test.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from jaxleak import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = ""  # one device: fast start-up
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _train(workdir, *extra):
  # Saves only at epoch ends (179 steps) and on SIGINT.
  return [sys.executable, "-m", "jaxleak.cli.main", "train", "--model", "mlp",
          "--dataset", "digits", "--epochs", "2", "--batch-size", "8",
          "--checkpoint-every", "1000", "--workdir", str(workdir), *extra]


def _restore(workdir):
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    state, meta = ckpt.restore()
    return state["params"], meta["step"], ckpt.steps


def test_sigint_saves_the_interrupted_step_and_rerun_resumes_exactly(tmp_path):
  straight = tmp_path / "straight"
  subprocess.run(_train(straight, "--no-progress"), env=_env(), check=True,
                 capture_output=True, timeout=300)

  stopped = tmp_path / "stopped"
  proc = subprocess.Popen(_train(stopped), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  err_chunks = []
  reader = threading.Thread(
      target=lambda: err_chunks.extend(iter(lambda: proc.stderr.read(64), "")),
      daemon=True)
  reader.start()
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    # The progress bar ("train:  n/358") shows the loop is stepping.
    bars = re.findall(r"(\d+)/358", "".join(err_chunks))
    if bars and int(bars[-1]) >= 2:
      proc.send_signal(signal.SIGINT)
      break
    time.sleep(0.01)
  proc.wait(timeout=120)
  reader.join(timeout=10)
  err = "".join(err_chunks)
  assert proc.returncode == 130, err[-2000:]
  match = re.search(r"interrupted at step (\d+); saved checkpoint step (\d+)",
                    err)
  assert match, err[-2000:]
  step = int(match.group(1))
  assert step == int(match.group(2)) and 2 <= step < 358
  assert "Traceback" not in err
  _, saved_step, _ = _restore(stopped)
  assert saved_step == step  # not the last epoch end: nothing was lost

  rerun = subprocess.run(_train(stopped, "--no-progress"), env=_env(),
                         check=True, capture_output=True, text=True,
                         timeout=300)
  assert f"resumed from step {step}" in rerun.stdout
  a, step_a, _ = _restore(straight)
  b, step_b, _ = _restore(stopped)
  assert step_a == step_b == 358
  for x, y in zip(_leaves(a), _leaves(b)):
    assert x[0] == y[0]
    np.testing.assert_array_equal(x[1], y[1])


def _leaves(tree, prefix=""):
  if isinstance(tree, dict):
    for k in sorted(tree):
      yield from _leaves(tree[k], f"{prefix}/{k}")
  else:
    yield prefix, np.asarray(tree)
