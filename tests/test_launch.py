"""jaxleak.launch: the one way a study launcher starts (config file, workdir)."""

import os
import subprocess
import sys
import textwrap

import pytest

from jaxleak import launch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = textwrap.dedent("""
    import ml_collections

    def get_config():
      c = ml_collections.ConfigDict()
      c.study = "toy"
      c.seeds = (0, 1)
      c.lr = 0.5
      return c
""")

_LAUNCHER = textwrap.dedent("""
    import logging, os, sys
    from absl import flags
    from jaxleak import launch

    _CONFIG, _WORKDIR = launch.define_config_flags()
    _EXTRA = flags.DEFINE_bool("extra", False, "a launcher's own flag")

    def main(argv):
      del argv
      cfg = _CONFIG.value
      workdir = launch.study_workdir(_WORKDIR.value, "arrays",
                                     script=__file__, study=cfg.study)
      assert os.path.isdir(os.path.join(workdir, "arrays"))
      assert logging.getLogger("absl").level == logging.WARNING
      assert "jax" not in sys.modules  # --devices style flags still act
      launch.timed_study(
          workdir, lambda: print("summary", cfg.seeds, cfg.lr, _EXTRA.value),
          None if _EXTRA.value else lambda: print("ran"))

    if __name__ == "__main__":
      launch.run(main, required=("config",))
""")


def _run(tmp_path, *args):
  (tmp_path / "cfg.py").write_text(_CONFIG)
  (tmp_path / "launcher.py").write_text(_LAUNCHER)
  env = dict(os.environ, PYTHONPATH=_ROOT)
  return subprocess.run(
      [sys.executable, str(tmp_path / "launcher.py"), *args],
      capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path,
      env=env)


def test_config_overrides_workdir_and_summary(tmp_path):
  out = _run(tmp_path, f"--config={tmp_path / 'cfg.py'}",
             "--config.seeds=(3,)", "--config.lr=0.25")
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert lines[0] == "ran"
  assert lines[1] == "summary (3,) 0.25 False"
  # No --workdir: results/<study> next to the launcher.
  assert lines[2].startswith("done in ") and lines[2].endswith(
      os.path.join(str(tmp_path), "results", "toy"))
  out = _run(tmp_path, f"--config={tmp_path / 'cfg.py'}", "--extra",
             f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.splitlines()[0] == "summary (0, 1) 0.5 True"  # not run
  assert os.path.isdir(tmp_path / "w" / "arrays")


def test_missing_config_and_helpshort(tmp_path):
  out = _run(tmp_path)
  assert out.returncode == 1
  assert "Flag --config must have a value other than None" in out.stderr
  out = _run(tmp_path, "--helpshort")  # absl exits 1 after the help
  for flag in ("--config", "--workdir", "--[no]extra"):
    assert flag in out.stdout, out.stdout


def test_sibling_config_loads_the_base_config_next_to_a_file(tmp_path):
  (tmp_path / "base.py").write_text(
      "def get_config(scale=1):\n  return {'steps': 10 * scale}\n")
  variant = tmp_path / "variant.py"
  assert launch.sibling_config(str(variant), "base") == {"steps": 10}
  assert launch.sibling_config(str(variant), "base", 3) == {"steps": 30}
  with pytest.raises(FileNotFoundError):
    launch.sibling_config(str(variant), "missing")
