"""How a study launcher in `experiments/` starts: one way for all of them.

Every launcher is ``python experiments/<study>/<script>.py --config <a
get_config() file> --workdir <folder>``, with ``--config.<field>=<value>``
overriding single fields (`ml_collections.config_flags`), and looks like::

  from jaxleak import launch

  _CONFIG, _WORKDIR = launch.define_config_flags()

  def main(argv):
    del argv
    cfg, workdir = _CONFIG.value, _WORKDIR.value
    ...

  if __name__ == "__main__":
    launch.run(main)

`run` marks the flags required, parses them (absl's `app.run`) and applies
the process-wide settings that the library never makes at import
(`jaxleak.cli.main.configure_process`: absl/orbax INFO logs quietened, the
Hugging Face hub offline) before `main` runs. `study_workdir` and
`timed_study` hold the rest of what the resumable study launchers share.
Needs the ``[experiments]`` extra (absl-py, ml-collections).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import importlib.util
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
from ml_collections import config_flags

__all__ = ("define_config_flags", "run", "sibling_config", "study_workdir",
           "timed_study")


def define_config_flags(*, config_help: str = "get_config() file",
                        workdir_default: str | None = None
                        ) -> tuple[Any, flags.FlagHolder[str]]:
  """Defines ``--config`` (a `get_config()` file) and ``--workdir``.

  Args:
    config_help: the ``--config`` help text.
    workdir_default: the default output folder (None: required, or derived
      by `study_workdir`).

  Returns:
    The two flag holders; ``.value`` is the parsed `ConfigDict` / folder.
  """
  config = config_flags.DEFINE_config_file("config", None, config_help)
  workdir = flags.DEFINE_string("workdir", workdir_default, "output folder")
  # Listed by the launcher's --helpshort, as if it had defined them.
  module = sys._getframe(1).f_globals.get("__name__", "")  # pylint: disable=protected-access
  if module == "__main__":
    module = sys.argv[0]
  for name in ("config", "workdir"):
    flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS[name])
  return config, workdir


def run(main: Callable[[list[str]], Any], *,
        required: Sequence[str] = ("config", "workdir")) -> None:
  """Parses the flags, applies the process settings and runs `main(argv)`."""
  from jaxleak.cli.main import configure_process  # pylint: disable=g-import-not-at-top
  flags.mark_flags_as_required(list(required))

  def main_with_process_settings(argv):
    configure_process()
    return main(argv)

  app.run(main_with_process_settings)


def study_workdir(workdir: str | None, *subdirs: str,
                  script: str | None = None, study: str | None = None) -> str:
  """The output folder, created with `subdirs`.

  Args:
    workdir: ``--workdir``; None uses ``results/<study>`` next to `script`.
    *subdirs: folders to create inside it (e.g. ``"arrays"``).
    script: the launcher's ``__file__`` (for the default folder).
    study: the config's study name (for the default folder).

  Raises:
    ValueError: without `workdir`, `script` and `study`.
  """
  if workdir is None:
    if script is None or study is None:
      raise ValueError("study_workdir: argument 'workdir' is None and there "
                       "is no default (pass script= and study=)")
    workdir = os.path.join(os.path.dirname(os.path.abspath(script)),
                           "results", study)
  os.makedirs(os.path.join(workdir, *subdirs), exist_ok=True)
  return workdir


def timed_study(workdir: str, summarise: Callable[[], Any],
                run_all: Callable[[], Any] | None = None) -> None:
  """Runs what is missing (`run_all`, unless None), then `summarise`.

  Prints the wall time and the folder written, as every study does.
  """
  t0 = time.time()
  if run_all is not None:
    run_all()
  summarise()
  print(f"done in {time.time() - t0:.0f} s; wrote {workdir}")


def sibling_config(config_file: str, name: str, *args: Any) -> Any:
  """``get_config(*args)`` of the config file `name`.py next to `config_file`.

  Config files are loaded by path (``--config path.py``), not as a package,
  so a variant of a study's config (``smoke.py`` of ``acceptance.py``) reads
  its base through this instead of ``from experiments... import``.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)),
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)
