"""Tests for jaxleak.report."""

import json
import math
import os

import numpy as np
import pytest

from jaxleak import report


def test_to_jsonable_and_write_json(tmp_path):
  data = {"a": np.float32(1.5), "b": np.arange(3), "c": (np.int64(2), float("inf")),
          "d": {"e": np.bool_(True)}}
  path = report.write_json(tmp_path / "m.json", data)
  loaded = json.load(open(path))
  assert loaded == {"a": 1.5, "b": [0, 1, 2], "c": [2, "inf"], "d": {"e": True}}


def test_markdown_table_and_report(tmp_path):
  table = report.markdown_table([{"x": 1, "y": math.pi}, {"x": 2, "y": 1e6}])
  lines = table.strip().splitlines()
  assert lines[0] == "| x | y |"
  assert lines[2] == "| 1 | 3.142 |"
  assert lines[3] == "| 2 | 1.000e+06 |"
  path = report.write_report(tmp_path, "Run", summary={"acc": 0.5},
                             tables={"T": [{"a": 1}]},
                             figures={"Curve": str(tmp_path / "c.png")},
                             config={"lr": 0.1})
  text = open(path).read()
  assert "# Run" in text and "| acc | 0.5 |" in text and "![Curve](c.png)" in text
  assert '"lr": 0.1' in text


def test_report_links_figures_relative_to_its_folder(tmp_path, monkeypatch):
  # A relative workdir joined into the figure path (how launchers build it)
  # must link to "sub/fig.png" from inside the folder, not from the cwd.
  monkeypatch.chdir(tmp_path)
  os.makedirs("out/sub")
  open("out/sub/fig.png", "wb").close()
  path = report.write_report("out", "Run", figures={
      "Joined": os.path.join("out", "sub", "fig.png"),
      "Already relative": "later.png"})
  text = open(path).read()
  assert "![Joined](sub/fig.png)" in text
  assert "![Already relative](later.png)" in text


def test_jsonl_round_trip_drops_a_truncated_last_line_and_names_corruption(tmp_path):
  path = tmp_path / "results.jsonl"
  assert report.read_jsonl(path) == []
  report.append_jsonl(path, {"trial": 0, "psnr": 31.5})
  report.append_jsonl(path, {"trial": 1, "psnr": float("nan")})
  with open(path, "a") as f:
    f.write('{"trial": 2, "ps')  # killed mid-write
  rows = report.read_jsonl(path)
  assert [r["trial"] for r in rows] == [0, 1] and rows[0]["psnr"] == 31.5
  assert rows[1]["psnr"] != rows[1]["psnr"]  # NaN survives
  path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
  with pytest.raises(ValueError, match="line 2 of .*results.jsonl"):
    report.read_jsonl(path)


def test_write_jsonl_rewrites_what_read_jsonl_reads(tmp_path):
  path = tmp_path / "results.jsonl"
  report.append_jsonl(path, {"a": 1})
  report.append_jsonl(path, {"a": 2})
  records = report.read_jsonl(path)
  records[0]["b"] = 0.5  # fill a field in, then rewrite the file
  assert report.write_jsonl(path, records) == str(path)
  assert report.read_jsonl(path) == [{"a": 1, "b": 0.5}, {"a": 2}]
  assert not (tmp_path / "results.jsonl.tmp").exists()
  assert path.read_text().count("\n") == 2
