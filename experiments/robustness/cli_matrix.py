"""Every `jaxleak` subcommand against bad input, hostile workdirs and SIGINT.

    python experiments/robustness/cli_matrix.py --workdir runs/cli_matrix

Runs each subcommand that `jaxleak.cli.main.build_parser` registers (found
at run time, so commands added later are covered) as a subprocess, at tiny
sizes, against:

* an unknown name (--model, --attack, --prior, --method or --dataset);
* zero, a negative number, NaN and Inf for a numeric flag of the command;
* a read-only workdir and a workdir whose parent is a file;
* a workdir that holds a different run (same command, other settings);
* its newest checkpoint truncated, then every checkpoint truncated;
* SIGINT once the first checkpoint exists (or after a few seconds), then
  the same command again.

and writes `cli_matrix.md` (one row per command, each cell the exit code and
the first line of the message) and `cli_matrix.json` (full stdout/stderr
tails) into --workdir. A cell is flagged **TRACEBACK** when the output holds
a Python traceback, and **SILENT** when a bad input exits 0. Where an input
class does not apply (no name or numeric flag, no --workdir, no checkpoints)
the cell says "n/a" and why. Commands that keep no checkpoints (attack, i2f,
sample-prior) are still interrupted, but not rerun (a rerun starts over).
Commands this script has no tiny configuration for run with their defaults
plus --help-derived bad values; their long-running columns are skipped.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

# Tiny, fast configurations: a complete run takes seconds to a minute on CPU.
# "long" is the same command made long enough to be interrupted mid-run.
# "flags" overrides the flags picked from --help for the bad-number columns
# (a flag the base configuration ignores would exit 0 for the wrong
# reason); "bad" gives a column's whole bad input; "resumable": False marks a command that keeps no checkpoints, so
# a rerun after SIGINT starts over (not run).
AUDIT_TINY = ["--set", "epochs=1", "--set", "dp_epochs=1", "--set",
              "ig_steps=20", "--set", "dsg_steps=4", "--set", "i2f_images=4",
              "--set", "mia_members=100", "--set", "lira_shadows=2", "--set",
              "shadow_epochs=1", "--set", "canaries=50", "--set",
              "unlearn_epochs=2", "--set", "attack_examples=1"]
TINY = {
    "audit": {
        "base": ["--quick", "--epsilons", "8", "--rules", "clip",
                 *AUDIT_TINY],
        "flags": {"int": "--seed", "float": "--epsilons"},
        # --seed 0 is valid: zero goes to an AuditConfig count instead.
        "bad": {"zero": ["--set", "ig_steps=0"]},
        "other": ["--model", "lenet"],
        "long": ["--set", "epochs=200"],
    },
    "dp-audit": {
        "base": ["--mode", "input", "--model", "mlp", "--dataset", "digits",
                 "--epochs", "1", "--batch-size", "64", "--canaries", "20"],
        "flags": {"int": "--canaries", "float": "--epsilon"},
        "other": ["--model", "lenet"],
        "long": ["--epochs", "100"],
    },
    "info": {"base": []},
    "train": {
        "base": ["--model", "mlp", "--dataset", "digits", "--epochs", "2",
                 "--batch-size", "64", "--checkpoint-every", "5"],
        "other": ["--model", "lenet"],
        "long": ["--epochs", "200"],
    },
    "train-dp": {
        "base": ["--model", "mlp", "--dataset", "digits", "--epochs", "0.5",
                 "--batch-size", "64", "--noise-multiplier", "1.0",
                 "--checkpoint-every", "3"],
        "other": ["--model", "lenet"],
        "long": ["--epochs", "50"],
    },
    "train-prior": {
        "base": ["--dataset", "digits", "--resolution", "16",
                 "--block-channels", "32", "32", "--steps", "6",
                 "--batch-size", "8", "--sample-every", "0",
                 "--sample-steps", "2", "--checkpoint-every", "2",
                 "--warmup-steps", "1", "--timesteps", "50"],
        "other": ["--lr", "5e-4"],
        "long": ["--steps", "5000"],
    },
    "sample-prior": {
        "resumable": False,
        "base": ["--prior", "mnist", "--n", "2", "--steps", "2"],
        "other": ["--prior", "lfw_faces"],
        "long": ["--n", "64", "--steps", "500"],
    },
    "unlearn": {
        "base": ["--model", "logreg", "--dataset", "digits", "--epochs", "3",
                 "--method", "finetune", "--ratio", "0.1"],
        "other": ["--model", "mlp"],
        "long": ["--epochs", "500", "--no-step-cache"],
    },
    "attack": {
        "resumable": False,
        "base": ["--attack", "idlg", "--model", "mlp", "--dataset", "digits",
                 "--steps", "3"],
        "other": ["--model", "lenet"],
        "long": ["--steps", "20000"],
    },
    "i2f": {
        "resumable": False,
        "base": ["--model", "mlp", "--dataset", "digits", "--n", "3",
                 "--attack", "none", "--probes", "0"],
        "other": ["--model", "lenet"],
        "long": ["--n", "300", "--attack", "l2", "--attack-steps", "3000"],
    },
}

SIGINT_GRACE_S = 60
UNKNOWN_NAME_FLAGS = ("--attack", "--method", "--prior", "--model", "--rule",
                      "--dataset")
INT_FLAGS = ("--batch-size", "--n", "--steps", "--epochs", "--trials")
FLOAT_FLAGS = ("--lr", "--guidance-scale", "--noise-var", "--epsilon",
               "--ratio", "--eps")

COLUMNS = ("ok run", "unknown name", "zero", "negative", "NaN", "Inf",
           "read-only workdir", "workdir under a file", "other run's workdir",
           "newest ckpt truncated", "all ckpts truncated", "SIGINT",
           "rerun after SIGINT")
# Columns where exit 0 means a bad input was accepted.
MUST_FAIL = {"unknown name", "zero", "negative", "NaN", "Inf",
             "read-only workdir", "workdir under a file"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
  from jaxleak.cli import main as cli_main  # pylint: disable=g-import-not-at-top
  parser = cli_main.build_parser()
  for action in parser._actions:  # pylint: disable=protected-access
    if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
      return dict(action.choices)
  return {}


def _options(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
  out = {}
  for action in sub._actions:  # pylint: disable=protected-access
    for flag in action.option_strings:
      out[flag] = action
  return out


def _is_numeric(action: argparse.Action, kind: type) -> bool:
  if action.type is None or action.nargs not in (None, "?"):
    return False
  for text in ("1", "0.5"):
    try:
      value = action.type(text)
    except (argparse.ArgumentTypeError, TypeError, ValueError):
      value = None  # this text is not valid for the flag; try the next
    if isinstance(value, kind) and not isinstance(value, bool):
      return True
  return False


def pick_flags(sub: argparse.ArgumentParser) -> dict[str, str | None]:
  opts = _options(sub)
  pick = lambda names, ok: next((n for n in names if n in opts
                                 and ok(opts[n])), None)
  # A free-text name: argparse itself rejects values outside `choices`.
  name_flag = pick(UNKNOWN_NAME_FLAGS, lambda a: a.type is None
                   and a.nargs is None and not a.const and a.choices is None)
  int_flag = pick(INT_FLAGS, lambda a: _is_numeric(a, int)) or pick(
      sorted(opts), lambda a: _is_numeric(a, int))
  float_flag = pick(FLOAT_FLAGS, lambda a: _is_numeric(a, float)) or pick(
      sorted(opts), lambda a: _is_numeric(a, float))
  return {"name": name_flag, "int": int_flag, "float": float_flag}


def _with(base: list[str], extra: list[str]) -> list[str]:
  """`base` with the flags in `extra` replaced (or added)."""
  out, i = [], 0
  flags = {t for t in extra if t.startswith("--")}
  while i < len(base):
    if base[i] in flags:
      i += 1
      while i < len(base) and not base[i].startswith("--"):
        i += 1
      continue
    out.append(base[i])
    i += 1
  return out + extra


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["XLA_FLAGS"] = ""
  env.pop("JAXLEAK_DEBUG", None)
  return env


def run_cli(argv: list[str], timeout: float, *, sigint_when=None) -> dict:
  """Runs `jaxleak ARGV`; with `sigint_when`, interrupts when it returns True."""
  cmd = [sys.executable, "-m", "jaxleak.cli.main", *argv]
  t0 = time.time()
  proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)
  interrupted = False
  if sigint_when is not None:
    while proc.poll() is None and time.time() - t0 < timeout:
      if sigint_when(time.time() - t0):
        proc.send_signal(signal.SIGINT)
        interrupted = True
        break
      time.sleep(0.2)
  # An interrupted command has SIGINT_GRACE_S to stop, as a user would wait.
  left = (SIGINT_GRACE_S if interrupted
          else max(timeout - (time.time() - t0), 1))
  try:
    out, err = proc.communicate(timeout=left)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    rc = (f"no exit within {SIGINT_GRACE_S} s of SIGINT" if interrupted
          else "timeout")
    return {"rc": rc, "stdout": out, "stderr": err,
            "seconds": time.time() - t0, "interrupted": interrupted}
  return {"rc": proc.returncode, "stdout": out, "stderr": err,
          "seconds": time.time() - t0, "interrupted": interrupted}


def _step_dirs(workdir: str) -> list[str]:
  """Checkpoint step folders (named by digits) anywhere under `workdir`."""
  found = []
  for root, dirs, _ in os.walk(workdir):
    found += [os.path.join(root, d) for d in dirs if d.isdigit()]
  return sorted(found, key=lambda p: (os.path.dirname(p),
                                      int(os.path.basename(p))))


def _truncate(step_dir: str) -> int:
  n = 0
  for root, _, files in os.walk(step_dir):
    for f in files:
      path = os.path.join(root, f)
      size = os.path.getsize(path)
      if size > 0:
        with open(path, "r+b") as fh:
          fh.truncate(size // 2)
        n += 1
  return n


def summarise(res: dict | str | None, column: str) -> dict:
  if res is None:
    return {"cell": "n/a", "flag": None}
  if isinstance(res, str):  # why the input class does not apply
    return {"cell": f"n/a ({res})", "flag": None}
  err, out = res["stderr"], res["stdout"]
  text = err if err.strip() else out
  lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines()
           if ln.strip() and not _is_noise(ln)]
  first = lines[0] if lines else ""
  if res["rc"] != 0 and isinstance(res["rc"], int) and err.strip():
    errs = [ln.strip() for ln in err.replace("\r", "\n").splitlines()
            if "error" in ln.lower() and not _is_noise(ln)]
    first = errs[0] if errs else first
  if column == "SIGINT" and res["interrupted"]:  # what it said on stopping
    said = [ln.strip() for ln in err.splitlines()
            if "interrupted" in ln.lower() and not _is_noise(ln)]
    first = said[0] if said else first
  if column == "rerun after SIGINT":  # what matters: did it pick up?
    # "resumed from" / "resuming from", not "rerun ... to resume".
    resumed = [ln.strip() for ln in (out + "\n" + err).splitlines()
               if re.search(r"resum(ed|ing) from", ln.lower())
               and not _is_noise(ln)]
    first = resumed[0] if resumed else f"(no resume message) {first}"
  flag = None
  if "Traceback (most recent call last)" in err + out:
    flag = "TRACEBACK"
  elif column in MUST_FAIL and res["rc"] == 0:
    flag = "SILENT"
  elif column == "ok run" and res["rc"] != 0:
    flag = "FAILED"
  elif not isinstance(res["rc"], int):
    flag = "HANG"
  return {"cell": f"{res['rc']}: {first[:160]}", "flag": flag}


def _is_noise(line: str) -> bool:
  noise = ("Flax classes are deprecated", "%|", "it/s]", "step/s]",
           "warnings.warn", "UserWarning")
  return any(n in line for n in noise)


def matrix_for(command: str, sub: argparse.ArgumentParser, root: str,
               timeout: float) -> dict[str, dict]:
  conf = TINY.get(command, {"base": []})
  base = list(conf["base"])
  has_run_flags = "--workdir" in _options(sub)
  nopro = ["--no-progress"] if "--no-progress" in _options(sub) else []
  flags = {**pick_flags(sub), **conf.get("flags", {})}
  cells: dict[str, dict | str | None] = dict.fromkeys(COLUMNS)
  w = lambda name: os.path.join(root, command, name)
  run = lambda argv, **kw: run_cli([command, *argv], timeout, **kw)
  wd = lambda name: (["--workdir", w(name)] if has_run_flags else [])

  cells["ok run"] = run(base + nopro + wd("ok"))
  cells["unknown name"] = "takes no name"
  if flags["name"]:
    cells["unknown name"] = run(
        _with(base, [flags["name"], "no_such_name"]) + nopro + wd("name"))
  for column, flag, value in (("zero", "int", "0"), ("negative", "int", "-3"),
                              ("NaN", "float", "nan"),
                              ("Inf", "float", "inf")):
    cells[column] = f"takes no {flag} flag"
    if column in conf.get("bad", {}):
      cells[column] = run(
          _with(base, conf["bad"][column]) + nopro + wd(column))
    elif flags[flag]:
      cells[column] = run(
          _with(base, [flags[flag], value]) + nopro + wd(column))
  if not has_run_flags:
    for column in COLUMNS[6:]:
      cells[column] = ("writes no files, takes no --workdir"
                       if "SIGINT" not in column else
                       "writes nothing; ends at once")
    return {c: {**summarise(r, c), "raw": _tail(r)} for c, r in cells.items()}
  resumable = conf.get("resumable", True)

  if os.geteuid() == 0:  # root ignores permission bits: use a read-only fs
    read_only = "/sys/jaxleak_cli_matrix_read_only"
  else:
    read_only = w("read_only")
    os.makedirs(read_only, exist_ok=True)
    os.chmod(read_only, 0o555)
  cells["read-only workdir"] = run(
      base + nopro + ["--workdir", read_only])
  a_file = w("a_file")
  os.makedirs(os.path.dirname(a_file), exist_ok=True)
  with open(a_file, "w") as f:
    f.write("not a folder\n")
  cells["workdir under a file"] = run(
      base + nopro + ["--workdir", os.path.join(a_file, "run")])

  ok_dir = w("ok")
  steps = _step_dirs(ok_dir) if cells["ok run"]["rc"] == 0 else []
  for column in ("newest ckpt truncated", "all ckpts truncated"):
    cells[column] = ("keeps no checkpoints" if not resumable else
                     "the ok run failed or wrote no checkpoint")
  if steps:
    for column, victims in (("newest ckpt truncated", "newest"),
                            ("all ckpts truncated", "all")):
      trunc = w(column.replace(" ", "_"))
      shutil.rmtree(trunc, ignore_errors=True)
      shutil.copytree(ok_dir, trunc)
      dirs = _step_dirs(trunc)
      for d in (dirs[-1:] if victims == "newest" else dirs):
        _truncate(d)
      cells[column] = run(base + nopro + ["--workdir", trunc])

  if "other" in conf and cells["ok run"]["rc"] == 0:  # after the copies above
    cells["other run's workdir"] = run(
        _with(base, conf["other"]) + nopro + ["--workdir", ok_dir])

  if "long" in conf:
    long_args = _with(base, conf["long"]) + nopro
    sig_dir = w("sigint")
    shutil.rmtree(sig_dir, ignore_errors=True)

    def ready(elapsed: float) -> bool:
      return bool(_step_dirs(sig_dir)) or elapsed > 45

    first = run(long_args + ["--workdir", sig_dir], sigint_when=ready)
    cells["SIGINT"] = first
    cells["rerun after SIGINT"] = (
        "keeps no checkpoints: a rerun starts over" if not resumable else
        "the SIGINT run ended before it was interrupted")
    if first["interrupted"] and resumable:
      # Resume, but only to check that it picks up: stop it again soon.
      again = run(long_args + ["--workdir", sig_dir],
                  sigint_when=lambda t: t > 60)
      cells["rerun after SIGINT"] = again
  return {c: {**summarise(r, c), "raw": _tail(r)} for c, r in cells.items()}


def _tail(res: dict | str | None) -> dict | None:
  if res is None or isinstance(res, str):
    return None
  return {"rc": res["rc"], "seconds": round(res["seconds"], 1),
          "stdout": res["stdout"][-2000:], "stderr": res["stderr"][-3000:]}


def write_markdown(results: dict[str, dict], path: str, meta: dict) -> None:
  flagged = [(cmd, col, cell["flag"]) for cmd, row in results.items()
             for col, cell in row.items() if cell["flag"]]
  lines = [
      "# Every jaxleak subcommand against bad input",
      "",
      (f"Generated by `python experiments/robustness/cli_matrix.py` on "
       f"{meta['time']} ({meta['git']}); {meta['seconds']:.0f} s"
       + (f" (still running: {', '.join(meta['pending'])})"
          if meta.get("pending") else "")
       + ". Each cell: exit code, then the first line of the error (or of "
       "the output). **TRACEBACK**: a Python traceback was printed; "
       "**SILENT**: a bad input exited 0; **HANG**: no exit within the time "
       f"limit (or within {SIGINT_GRACE_S} s of SIGINT); **FAILED**: the "
       "plain tiny run did not succeed. Exit codes: 0 done, 2 bad input, 75 "
       "preempted, 130 interrupted (SIGINT). The rerun after SIGINT is "
       "itself interrupted after 60 s; what matters there is that it "
       "resumed."),
      "",
      (f"Flagged cells: {len(flagged)}" + (
          "" if not flagged else " — " + "; ".join(
              f"{c} / {col}: {f}" for c, col, f in flagged))),
      "",
  ]
  for cmd, row in results.items():
    lines += [f"## jaxleak {cmd}", ""]
    if meta.get("rows", {}).get(cmd):
      lines += [f"Run at {meta['rows'][cmd]}.", ""]
    lines += ["| input | result |", "|---|---|"]
    for col in COLUMNS:
      cell = row[col]
      text = cell["cell"].replace("|", "\\|")
      if cell["flag"]:
        text = f"**{cell['flag']}** {text}"
      lines.append(f"| {col} | {text} |")
    lines.append("")
  with open(path, "w") as f:
    f.write("\n".join(lines))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True, help="output folder")
  ap.add_argument("--commands", nargs="*", default=None,
                  help="only these subcommands (default: every one)")
  ap.add_argument("--jobs", type=int, default=2,
                  help="commands tested at the same time")
  ap.add_argument("--timeout", type=float, default=600,
                  help="seconds per jaxleak call")
  ap.add_argument("--update", action="store_true",
                  help="keep the rows of the commands not run now from "
                       "--workdir's cli_matrix.json (rerun a few rows)")
  args = ap.parse_args(argv)
  # A shell starts background jobs with SIGINT ignored, an ignored signal
  # stays ignored across exec, and Python then never raises
  # KeyboardInterrupt. A handled signal is reset to the default at exec, so
  # handling it here lets every jaxleak child see SIGINT as a user's Ctrl-C.
  signal.signal(signal.SIGINT, signal.default_int_handler)
  t0 = time.time()
  subs = subcommands()
  commands = args.commands or list(subs)
  unknown = sorted(set(commands) - set(subs))
  if unknown:
    ap.error(f"argument --commands: unknown {', '.join(unknown)}")
  scratch = os.path.join(os.path.abspath(args.workdir), "scratch")
  for c in commands:  # each row starts from an empty folder
    shutil.rmtree(os.path.join(scratch, c), ignore_errors=True)
  git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                       capture_output=True, text=True, check=False
                       ).stdout.strip()
  os.makedirs(args.workdir, exist_ok=True)
  json_path = os.path.join(args.workdir, "cli_matrix.json")
  previous = {"meta": {}, "results": {}}
  if args.update and os.path.exists(json_path):
    with open(json_path) as f:
      previous = json.load(f)
  kept = {c: r for c, r in previous["results"].items()
          if c in subs and c not in commands}
  old_rows = previous["meta"].get("rows", {})
  rows = {c: old_rows.get(c, f"{previous['meta'].get('git')}, "
                             f"{previous['meta'].get('time')}") for c in kept}
  seconds = previous["meta"].get("seconds", 0.0) if kept else 0.0

  def write(done: dict) -> None:
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for c in done:
      rows.setdefault(c, f"commit {git}, {now}")
    results = {c: (done.get(c) or kept[c]) for c in subs
               if c in done or c in kept}
    meta = {"time": now, "git": f"commit {git}",
            "seconds": seconds + time.time() - t0,
            "pending": [c for c in commands if c not in done],
            "rows": {c: rows[c] for c in results}}
    with open(json_path, "w") as f:
      json.dump({"meta": meta, "results": results}, f, indent=1)
    write_markdown(results, os.path.join(args.workdir, "cli_matrix.md"),
                   meta)

  done = {}
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    futures = {c: pool.submit(matrix_for, c, subs[c], scratch, args.timeout)
               for c in commands}
    for c in commands:  # in order; the tables are rewritten as rows finish
      done[c] = futures[c].result()
      flagged = [col for col, cell in done[c].items() if cell["flag"]]
      print(f"{c}: done ({len(flagged)} flagged: {', '.join(flagged)})",
            flush=True)
      write(done)
  print(f"wrote {args.workdir}/cli_matrix.md, cli_matrix.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
