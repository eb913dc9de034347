"""`jaxleak audit` end to end at reduced sizes, its report, resume and checkpoints."""

import base64
import html as html_std
import json
import os
import re
import shutil
import time

import jax
import numpy as np
import pytest

from jaxleak import data
from jaxleak import models
from jaxleak import training
from jaxleak.cli import main as cli_main
from jaxleak.privacy_audit import html
from jaxleak.privacy_audit import pipeline
from jaxleak.privacy_audit import report

# The --quick preset shrunk further so the whole audit runs in about a minute.
TINY = ["--quick", "--rules", "clip", "--epsilons", "8", "--no-progress",
        "--set", "epochs=1", "--set", "dp_epochs=1", "--set", "ig_steps=10",
        "--set", "dsg_steps=4", "--set", "i2f_images=4",
        "--set", "mia_members=64", "--set", "lira_shadows=2",
        "--set", "shadow_epochs=1", "--set", "canaries=64",
        "--set", "unlearn_epochs=2"]


@pytest.fixture(scope="module")
def audit_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("audit"))
  t0 = time.perf_counter()
  assert cli_main.main(["audit", *TINY, "--workdir", workdir]) == 0
  seconds = time.perf_counter() - t0
  with open(os.path.join(workdir, "metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(workdir, "report.html")) as f:
    page = f.read()
  return workdir, metrics, page, seconds


def test_report_has_every_section_and_embedded_figures(audit_run):
  workdir, _metrics, page, _ = audit_run
  headings = re.findall(r"<h2>(.*?)</h2>", page)
  assert [h.replace("&#x27;", "'") for h in headings] == [
      t.replace("²", "²") for t in report.SECTION_TITLES]
  images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
  # privacy-utility, reconstruction grid, I²F ranking, two ROC figures
  assert len(images) == 5
  for b64 in images:
    png = base64.b64decode(b64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
  assert "http://" not in page and "https://" not in page  # self-contained
  for name in ("report.md", "privacy_utility.png", "reconstruction_grid.png",
               "i2f_ranking.png", "roc_membership.png", "roc_unlearning.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0
  # Each section but the summary and configuration says how to reproduce it.
  assert page.count("--rerun ") == 6


def test_report_numbers_match_metrics_json(audit_run):
  _, metrics, page, _ = audit_run
  summary = metrics["summary"]
  assert [r["model"] for r in summary] == ["non_private", "dp_clip_eps8"]
  table = page.split("<caption>Leakage by model</caption>")[1].split(
      "</table>")[0]
  cells = [re.findall(r"<td>(.*?)</td>", row)
           for row in re.findall(r"<tr>(.*?)</tr>", table)]
  cells = [row for row in cells if row]  # the header row holds <th> only
  header = re.findall(r"<th>(.*?)</th>", table)
  assert len(cells) == len(summary)
  for row, cell in zip(summary, cells):
    for key, value in row.items():
      assert cell[header.index(html_std.escape(key))] == html_std.escape(
          html.format_value(value)), key
  res = metrics["results"]
  # The DP model spends the target epsilon; the non-private one is better.
  dp_row = next(m for m in res["models"]["models"] if m["model"] != "non_private")
  assert dp_row["epsilon"] == pytest.approx(8.0, rel=1e-3)
  assert dp_row["noise_multiplier"] > 0
  for r in res["reconstruction"]["attacks"]:
    assert np.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1  # SSIM is in [-1, 1]
  for r in res["membership"]["attacks"]:
    assert 0.0 <= r["loss_auc"] <= 1.0 and 0.0 <= r["lira_auc"] <= 1.0
  ranks = [r["predicted_rmse"] for r in res["i2f"]["ranking"]]
  assert ranks == sorted(ranks) and len(ranks) == 4
  names = {r["model"] for r in res["unlearning"]["models"]}
  assert {"original", "retrain", "mini_unlearning"} <= names


def test_rerun_resumes_without_recomputing(audit_run):
  workdir, metrics, _, _ = audit_run
  t0 = time.perf_counter()
  assert cli_main.main(["audit", *TINY, "--workdir", workdir]) == 0
  with open(os.path.join(workdir, "metrics.json")) as f:
    again = json.load(f)
  for stage in ("reconstruction", "i2f", "membership", "unlearning"):
    assert again["results"][stage] == metrics["results"][stage], stage
  # Only restoring the trained models and redrawing the figures remain.
  assert again["stage_seconds"]["reconstruction"] < 1.0
  assert time.perf_counter() - t0 < 60


def test_other_configuration_in_the_same_workdir_is_refused(audit_run):
  workdir = audit_run[0]
  # Called as a library it names its argument; the CLI says --workdir
  # (tests/cli/test_cli_workdir.py).
  with pytest.raises(ValueError,
                     match="argument 'workdir'=.* holds a different run"):
    pipeline.run_audit(pipeline.AuditConfig.quick(epochs=2), workdir,
                       progress=False)


def test_bad_flags_name_the_flag(tmp_path, capsys):
  for argv, flag in ((["--rules", "nope"], "--rules"),
                     (["--epsilons", "0"], "--epsilons"),
                     (["--set", "ig_steps=nan"], "--set"),
                     (["--set", "no_such_field=1"], "--set"),
                     (["--rerun", "everything"], "--rerun")):
    assert cli_main.main(["audit", *argv, "--workdir", str(tmp_path)]) == 2
    assert flag in capsys.readouterr().err


def test_audits_a_checkpoint_written_by_jaxleak_train(tmp_path):
  workdir = str(tmp_path / "train")
  assert cli_main.main(["train", "--epochs", "1", "--no-progress",
                        "--workdir", workdir]) == 0
  with open(os.path.join(workdir, "metrics.json")) as f:
    trained_acc = json.load(f)["test_accuracy"]
  test = data.load("mnist_subset", "test")
  apply_fn, like = models.create("cnn_mnist", 10, test.image_shape,
                                 jax.random.key(0))
  params, info = pipeline.load_trained_checkpoint(workdir, like)
  acc = training.evaluate(apply_fn, params, test)["accuracy"]
  assert acc == pytest.approx(trained_acc, abs=1e-6) and acc > 0.8
  assert info["checkpoint_step"] > 0
  _, other = models.create("lenet", 10, test.image_shape, jax.random.key(0))
  with pytest.raises(ValueError, match="--checkpoint"):
    pipeline.load_trained_checkpoint(workdir, other)
  with pytest.raises(FileNotFoundError, match="--checkpoint"):
    pipeline.load_trained_checkpoint(str(tmp_path), like)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_a_real_browser(audit_run):
  if CHROMIUM is None:
    pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does)")
  playwright = pytest.importorskip(
      "playwright.sync_api", reason="playwright is in the [test] extra")
  workdir, _, _, _ = audit_run
  errors = []
  with playwright.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM,
                                args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("file://" + os.path.join(workdir, "report.html"))
    widths = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.innerText)")
    page.screenshot(path=os.path.join(workdir, "report_screenshot.png"),
                    full_page=True)
    browser.close()
  assert len(widths) == 5 and all(w > 0 for w in widths), widths
  assert headings == list(report.SECTION_TITLES)
  assert errors == []
  assert os.path.getsize(os.path.join(workdir, "report_screenshot.png")) > 10000
