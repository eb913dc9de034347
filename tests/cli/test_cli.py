"""End-to-end tests of the `jaxleak` console script (run as subprocesses)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from jaxleak import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
  env = dict(os.environ)
  # One device is enough here and keeps start-up fast.
  env["XLA_FLAGS"] = ""
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _cmd(*args):
  return [sys.executable, "-m", "jaxleak.cli.main", *args]


def _train_args(workdir):
  return ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "4",
          "--batch-size", "32", "--checkpoint-every", "5", "--no-progress",
          "--workdir", str(workdir)]


def _final_params(workdir):
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    state, meta = ckpt.restore()
  return state["params"], meta["step"]


def test_info_prints_versions_and_devices():
  out = subprocess.run(_cmd("info"), capture_output=True, text=True, env=_env(),
                       timeout=120, check=True).stdout
  assert "jax " in out and "flax" in out and "devices" in out
  assert "mnist_subset" in out


def test_sigkill_mid_run_then_rerun_resumes_to_identical_params(tmp_path):
  """Kill -9 the CLI after its first checkpoint, rerun it, compare params."""
  straight = tmp_path / "straight"
  subprocess.run(_cmd(*_train_args(straight)), env=_env(), check=True,
                 capture_output=True, timeout=300)

  killed = tmp_path / "killed"
  proc = subprocess.Popen(_cmd(*_train_args(killed)), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt_dir = killed / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if ckpt_dir.exists() else []
    if steps:
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed"
  assert not (killed / "metrics.json").exists()

  rerun = subprocess.run(_cmd(*_train_args(killed)), env=_env(), check=True,
                         capture_output=True, text=True, timeout=300)
  assert "resumed from step" in rerun.stdout
  a, step_a = _final_params(straight)
  b, step_b = _final_params(killed)
  assert step_a == step_b
  for x, y in zip(sorted(_leaves(a)), sorted(_leaves(b))):
    assert x[0] == y[0]
    np.testing.assert_array_equal(x[1], y[1])
  metrics = json.load(open(killed / "metrics.json"))
  assert metrics["test_accuracy"] == json.load(open(straight / "metrics.json"))["test_accuracy"]
  for name in ("report.md", "learning_curve.png", "accuracy_curve.png"):
    assert os.path.getsize(killed / name) > 0


def _leaves(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, f"{prefix}/{k}")
  else:
    yield prefix, np.asarray(tree)


def test_preempt_flag_exits_75_and_bad_input_names_argument(tmp_path):
  args = _train_args(tmp_path / "p") + ["--preempt-after-steps", "3"]
  res = subprocess.run(_cmd(*args), env=_env(), capture_output=True, text=True,
                       timeout=300)
  assert res.returncode == 75, res.stderr
  bad = subprocess.run(_cmd("train", "--dataset", "no_such_dataset_xyz",
                            "--workdir", str(tmp_path / "bad"), "--data-dir",
                            str(tmp_path / "empty")),
                       env=_env(), capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2
  assert "no_such_dataset_xyz" in bad.stderr and "mnist_subset" in bad.stderr
  assert "Traceback" not in bad.stderr
