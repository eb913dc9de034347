"""Importing jaxleak changes no process-wide state; entry points do."""

import os
import subprocess
import sys
import textwrap

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = textwrap.dedent("""
    import logging, os
    os.environ.pop("HF_HUB_OFFLINE", None)
    import diffusers.utils.logging as dlog
    import matplotlib
    verbosity, backend = dlog.get_verbosity(), matplotlib.get_backend()
    absl_level = logging.getLogger("absl").level
    import jaxleak.checkpoint, jaxleak.diffusion, jaxleak.attacks.membership
    assert "HF_HUB_OFFLINE" not in os.environ, "HF_HUB_OFFLINE set at import"
    assert dlog.get_verbosity() == verbosity, "diffusers verbosity changed"
    assert matplotlib.get_backend() == backend, "matplotlib backend changed"
    assert logging.getLogger("absl").level == absl_level, "absl level changed"
    from jaxleak.cli import main
    main.configure_process()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert logging.getLogger("absl").level == logging.WARNING
    print("ok")
""")


def test_import_has_no_side_effects_and_configure_process_has_them():
  env = dict(os.environ, PYTHONPATH=_ROOT)
  out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True,
                       text=True, check=False, timeout=300, cwd=_ROOT, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().endswith("ok")
  assert "deprecated" not in out.stderr  # diffusers' Flax deprecation log.
