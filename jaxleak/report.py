"""Run reports: metrics JSON and a human-readable Markdown report per workdir.

Every jaxleak command writes its results into its ``--workdir`` as
``metrics.json`` (machine-readable) and ``report.md`` (a person's summary with
tables and the PNG figures the run produced).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import datetime
import json
import math
import os
from typing import Any

import numpy as np

__all__ = ("to_jsonable", "write_json", "read_jsonl", "append_jsonl",
           "write_jsonl", "markdown_table", "write_report")


def to_jsonable(obj: Any) -> Any:
  """Converts numpy/jax scalars and arrays (recursively) to plain JSON types."""
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if hasattr(obj, "tolist") and hasattr(obj, "dtype"):
    return to_jsonable(np.asarray(obj).tolist())
  if isinstance(obj, float) and not math.isfinite(obj):
    return str(obj)  # JSON has no inf/nan; keep them readable.
  if isinstance(obj, (np.floating, np.integer, np.bool_)):
    return to_jsonable(obj.item())
  return obj


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> str:
  """Writes `data` as indented JSON (atomically) and returns the path."""
  path = os.fspath(path)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(to_jsonable(data), f, indent=2, sort_keys=False)
    f.write("\n")
  os.replace(tmp, path)
  return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Records of a resumable study's ``results.jsonl`` ([] if it does not exist).

  A run killed mid-write leaves a truncated last line; it is dropped (that
  run is simply redone). A corrupt line anywhere else raises, naming it.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f.read().split("\n") if line.strip()]
  records = []
  for number, line in enumerate(lines, 1):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as err:
      if number == len(lines):
        break
      raise ValueError(f"read_jsonl: line {number} of {path!r} is not JSON "
                       f"({err.msg}); fix or delete that line") from None
  return records


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
  """Appends one record as a JSON line (flushed, so a kill loses at most it)."""
  with open(os.fspath(path), "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()


def write_jsonl(path: str | os.PathLike,
                records: Sequence[Mapping[str, Any]]) -> str:
  """Rewrites a JSONL file with `records` (atomically: a kill keeps the old
  file whole) and returns the path; e.g. after filling in fields of records
  that `read_jsonl` returned."""
  path = os.fspath(path)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  os.replace(tmp, path)
  return path


def _fmt(v: Any) -> str:
  if isinstance(v, (float, np.floating)):
    v = float(v)
    if not math.isfinite(v):
      return str(v)
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
  return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]],
                   columns: Sequence[str] | None = None) -> str:
  """Formats a list of dicts as a Markdown table (numbers to 4 digits)."""
  if not rows:
    return "(no rows)\n"
  columns = list(columns or rows[0].keys())
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
  return "\n".join(lines) + "\n"


def write_report(workdir: str | os.PathLike, title: str, *,
                 summary: Mapping[str, Any] | None = None,
                 tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                 figures: Mapping[str, str] | None = None,
                 config: Mapping[str, Any] | None = None,
                 notes: str | None = None) -> str:
  """Writes ``report.md`` into `workdir` and returns its path.

  Args:
    workdir: the run's output folder.
    title: the report heading.
    summary: headline numbers, shown as a two-column table.
    tables: named tables (lists of row dicts).
    figures: caption -> PNG path. Absolute paths and paths that exist from
      the current directory (e.g. ``os.path.join(workdir, "x.png")`` with a
      relative `workdir`) are linked relative to `workdir`, so the report
      renders wherever the folder is moved; other relative paths are taken
      as already relative to `workdir`.
    config: the run's configuration, shown at the end.
    notes: free text added after the summary.
  """
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  now = datetime.datetime.now().isoformat(timespec="seconds")
  parts = [f"# {title}\n", f"_written {now}_\n"]
  if summary:
    parts.append("## Summary\n")
    parts.append(markdown_table(
        [{"metric": k, "value": v} for k, v in summary.items()]))
  if notes:
    parts.append(notes.rstrip() + "\n")
  for name, rows in (tables or {}).items():
    parts.append(f"## {name}\n")
    parts.append(markdown_table(rows))
  for caption, path in (figures or {}).items():
    if os.path.isabs(path) or os.path.exists(path):
      rel = os.path.relpath(os.path.abspath(path), os.path.abspath(workdir))
    else:
      rel = os.fspath(path)
    parts.append(f"## {caption}\n\n![{caption}]({rel})\n")
  if config:
    parts.append("## Configuration\n\n```json\n"
                 + json.dumps(to_jsonable(config), indent=2) + "\n```\n")
  path = os.path.join(workdir, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path
