"""One self-contained HTML report: inline PNGs, tables and commands.

The audit's report must open anywhere (mailed, archived, attached to a
paper's supplement) without the files beside it, so every figure is embedded
as a base64 data URI and the page loads nothing from the network.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
import dataclasses
import datetime
import html
import math
import os
from typing import Any

__all__ = ("Section", "format_value", "write_html")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;
 color:#1b1f24;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:1.7em;margin-bottom:0}h2{border-bottom:2px solid #e3e6ea;
 padding-bottom:4px;margin-top:40px}
.meta{color:#57606a;font-size:.9em}
table{border-collapse:collapse;margin:12px 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:right}
th{background:#f0f3f6}td:first-child,th:first-child{text-align:left}
figure{margin:16px 0}figure img{max-width:100%;border:1px solid #e3e6ea}
figcaption{color:#57606a;font-size:.9em}
pre{background:#f6f8fa;padding:8px 12px;overflow-x:auto;font-size:.85em}
.note{color:#57606a;font-size:.92em}
nav a{margin-right:12px}
"""


@dataclasses.dataclass
class Section:
  """One report section.

  Attributes:
    title: the heading (also the anchor in the table of contents).
    text: paragraphs of plain text (escaped, not HTML).
    tables: caption -> rows (dicts with the same keys).
    figures: caption -> PNG path (embedded).
    command: the command that reproduces this section alone, if any.
  """
  title: str
  text: Sequence[str] = ()
  tables: Mapping[str, Sequence[Mapping[str, Any]]] = dataclasses.field(
      default_factory=dict)
  figures: Mapping[str, str] = dataclasses.field(default_factory=dict)
  command: str | None = None

  @property
  def anchor(self) -> str:
    return "".join(c if c.isalnum() else "-" for c in self.title.lower())


def format_value(v: Any) -> str:
  if isinstance(v, float):
    if math.isnan(v):
      return "n/a"
    if math.isinf(v):  # the non-private model's epsilon; metrics.json says "inf"
      return "inf" if v > 0 else "-inf"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
      return f"{v:.3g}"
    return f"{v:.4g}"
  return "" if v is None else str(v)


def _table(caption: str, rows: Sequence[Mapping[str, Any]]) -> str:
  if not rows:
    return f"<p class='note'>{html.escape(caption)}: no rows.</p>"
  cols: list[str] = []
  for row in rows:
    cols += [c for c in row if c not in cols]
  head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
  body = "".join(
      "<tr>" + "".join(f"<td>{html.escape(format_value(r.get(c)))}</td>" for c in cols)
      + "</tr>" for r in rows)
  return (f"<table><caption>{html.escape(caption)}</caption>"
          f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _figure(caption: str, path: str) -> str:
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode("ascii")
  return (f"<figure><img alt='{html.escape(caption)}' "
          f"src='data:image/png;base64,{data}'>"
          f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_html(path: str | os.PathLike, title: str,
               sections: Sequence[Section], *, subtitle: str = "") -> str:
  """Writes `sections` as one self-contained HTML file and returns its path."""
  now = datetime.datetime.now().isoformat(timespec="seconds")
  toc = " ".join(f"<a href='#{s.anchor}'>{html.escape(s.title)}</a>"
                 for s in sections)
  parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
           f"<body><main><h1>{html.escape(title)}</h1>"
           f"<p class='meta'>{html.escape(subtitle)} written {now}</p>"
           f"<nav>{toc}</nav>"]
  for s in sections:
    parts.append(f"<section id='{s.anchor}'><h2>{html.escape(s.title)}</h2>")
    parts += [f"<p>{html.escape(t)}</p>" for t in s.text]
    parts += [_table(c, rows) for c, rows in s.tables.items()]
    parts += [_figure(c, p) for c, p in s.figures.items()]
    if s.command:
      parts.append("<p class='note'>Reproduce this section:</p>"
                   f"<pre>{html.escape(s.command)}</pre>")
    parts.append("</section>")
  parts.append("</main></body></html>\n")
  path = os.fspath(path)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write("\n".join(parts))
  os.replace(tmp, path)
  return path
