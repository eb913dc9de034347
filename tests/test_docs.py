"""Item 16: the documentation agrees with the code and the committed results.

Cheap checks that read files (and ask two launchers for --helpshort). Each
check is a helper over the text, so `test_checks_catch_edited_documents`
can show that an edited copy of a document fails it.
"""

import argparse
import glob
import os
import re
import subprocess
import sys

from jaxleak.cli import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
ISSUE_NUMBER = re.compile(r"\bissues? #?\d", re.IGNORECASE)


def _read(*parts: str) -> str:
  with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
    return f.read()


def cli_subcommands() -> set[str]:
  """Every `jaxleak` subcommand, from the CLI's own argparse parser."""
  parser = cli_main.build_parser()
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      return set(action.choices)
  raise AssertionError("the jaxleak parser has no subcommands")


def readme_command_table(readme: str) -> set[str]:
  """Subcommands named in the first column of README's command table."""
  section = readme.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
  rows = [ln for ln in section.splitlines() if ln.startswith("| `jaxleak")]
  return {name for row in rows
          for name in re.findall(r"`jaxleak ([\w-]+)`", row.split(" | ")[0])}


def study_folders() -> list[str]:
  """Folders of experiments/ that hold a study (a README.md or a run.py)."""
  return sorted(
      name for name in os.listdir(EXPERIMENTS)
      if any(os.path.isfile(os.path.join(EXPERIMENTS, name, f))
             for f in ("README.md", "run.py")))


def studies_missing_from(index: str, folders: list[str]) -> list[str]:
  """The folders that `index` names neither as `name` nor as name/..."""
  return [name for name in folders
          if not re.search(rf"(?:`|experiments/){re.escape(name)}[`/]", index)]


def dp_speed_mismatches(readme: str) -> list[str]:
  """README's DP speed figures that the results file it cites lacks.

  The paragraph that names `benchmarks/dp_throughput.py` cites results
  files; each ratio after a citation (up to the next) must be in that file:
  "2.30x" verbatim, a range "1.7-2.3x" as the smallest and largest
  jaxleak / opacus ratio of the file's table, to one decimal.
  """
  paragraph = next(p for p in readme.split("\n\n")
                   if "benchmarks/dp_throughput.py" in p)
  pieces = re.split(r"`(benchmarks/results/[\w.]+)`", paragraph)
  problems, checked = [], 0
  for path, text in zip(pieces[1::2], pieces[2::2]):
    results = _read(path)
    for lo, hi in re.findall(r"\b(\d+\.\d)-(\d+\.\d)x", text):
      checked += 1
      ratios = _opacus_ratios(results)
      got = (f"{min(ratios):.1f}", f"{max(ratios):.1f}")
      if got != (lo, hi):
        problems.append(f"{lo}-{hi}x: {path} reads {got[0]}-{got[1]}x")
    for figure in re.findall(r"\b\d+\.\d\dx", text):
      checked += 1
      if figure not in results:
        problems.append(f"{figure} is not in {path}")
  if not checked:
    problems.append("no DP speed figure found after a results citation")
  return problems


def _opacus_ratios(results: str) -> list[float]:
  """The "jaxleak ... / opacus" column of a dp_throughput ratio table."""
  lines = [ln for ln in results.splitlines() if ln.startswith("|")]
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  col = next(i for i, c in enumerate(header) if c.endswith("/ opacus"))
  return [float(ln.strip("|").split("|")[col].strip().rstrip("x"))
          for ln in lines[2:]]


def test_every_cli_subcommand_is_in_the_readme_command_table():
  """Item 16: README's command table lists exactly the CLI's subcommands."""
  commands = cli_subcommands()
  table = readme_command_table(_read("README.md"))
  assert commands - table == set(), "not in README's command table"
  assert table - commands == set(), "in the table but not a subcommand"


def test_experiments_readme_names_every_study_folder():
  """Item 16: experiments/README.md mentions every study folder."""
  folders = study_folders()
  assert len(folders) >= 10, folders
  assert studies_missing_from(_read("experiments", "README.md"),
                              folders) == []


def test_study_readmes_do_not_cite_issue_numbers():
  """Item 16: no README under experiments/ refers to "issue 3" and the like
  (numbers of a tracker a reader of the repository cannot see)."""
  found = {}
  for path in glob.glob(os.path.join(EXPERIMENTS, "**", "README.md"),
                        recursive=True):
    with open(path, encoding="utf-8") as f:
      hits = ISSUE_NUMBER.findall(f.read())
    if hits:
      found[os.path.relpath(path, ROOT)] = hits
  assert found == {}


def test_unlearning_launchers_take_workdir_not_out():
  """Item 16: the unlearning launchers' output flag is --workdir, as their
  README commands and every other launcher's (it was --out)."""
  launchers = sorted(
      path for path in glob.glob(os.path.join(EXPERIMENTS, "unlearning",
                                              "*.py"))
      if "launch.run(" in open(path, encoding="utf-8").read())
  assert len(launchers) >= 2, launchers
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep
             + os.environ.get("PYTHONPATH", ""))
  for path in launchers:
    # --helpshort lists the launcher's own flags without running the study.
    text = subprocess.run([sys.executable, path, "--helpshort"],
                          capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT).stdout
    assert "--workdir: output folder" in text, (path, text)
    assert "--out" not in text, (path, text)


def test_readme_dp_speed_figures_are_in_the_results_it_cites():
  """Item 16: the DP speed ratios in README are the cited results file's."""
  assert dp_speed_mismatches(_read("README.md")) == []


def test_checks_catch_edited_documents():
  """The checks above fail on edited copies of the documents."""
  readme = _read("README.md")
  row = next(ln for ln in readme.splitlines()
             if ln.startswith("| `jaxleak i2f`"))
  assert "i2f" not in readme_command_table(readme.replace(row + "\n", ""))
  index = _read("experiments", "README.md")
  assert studies_missing_from(index.replace("robustness", "cli checks"),
                              study_folders()) == ["robustness"]
  assert ISSUE_NUMBER.search("fixed in issue 4") and ISSUE_NUMBER.search(
      "see Issues #12") and not ISSUE_NUMBER.search("no issue here")
  assert dp_speed_mismatches(readme.replace("2.30x", "2.40x", 1)) == [
      "2.40x is not in benchmarks/results/dp_throughput_compile_once.txt"]
  assert dp_speed_mismatches(readme.replace("1.7-2.3x", "1.8-2.3x")) == [
      "1.8-2.3x: benchmarks/results/dp_throughput.txt reads 1.7-2.3x"]
