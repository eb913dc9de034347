"""`jaxleak sample-prior`: settings resolution and an end-to-end run."""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from jaxleak.cli import prior as prior_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args(**kw):
  base = {"steps": None, "eta": None, "guidance_scale": None}
  base.update(kw)
  return argparse.Namespace(**base)


def test_flags_override_the_priors_recommendation_which_overrides_fallback():
  info = {"sampling": {"steps": 100, "eta": 1.0, "guidance_scale": 5.0}}
  assert prior_cli.sampling_settings(_args(), info) == {
      "steps": 100, "eta": 1.0, "guidance_scale": 5.0}
  assert prior_cli.sampling_settings(_args(steps=7, guidance_scale=2.0),
                                     info) == {
      "steps": 7, "eta": 1.0, "guidance_scale": 2.0}
  # A prior without a recommendation (e.g. a foreign diffusers folder).
  assert prior_cli.sampling_settings(_args(), {}) == prior_cli.SAMPLING_FALLBACK


def test_shipped_mnist_prior_records_the_measured_sampling_settings():
  from jaxleak import diffusion  # pylint: disable=g-import-not-at-top
  rec = diffusion.load_prior("mnist").info["sampling"]
  assert rec["steps"] == 50 and rec["eta"] == 0.0
  assert rec["guidance_scale"] == 3.0


def test_sample_prior_writes_grid_and_uses_recommended_settings(tmp_path):
  env = dict(os.environ, XLA_FLAGS="",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run(
      [sys.executable, "-m", "jaxleak.cli.main", "sample-prior", "--prior",
       "mnist", "--n", "4", "--steps", "3", "--workdir", str(tmp_path)],
      env=env, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  # --steps given; eta and guidance from the prior's record.
  assert (metrics["ddim_steps"], metrics["eta"],
          metrics["guidance_scale"]) == (3, 0.0, 3.0)
  images = np.load(tmp_path / "samples.npz")["images"]
  assert images.shape == (4, 32, 32, 1)
  assert images.min() >= 0.0 and images.max() <= 1.0
  assert (tmp_path / "samples.png").stat().st_size > 1000
