"""Audit grid: every weight rule at epsilon 1, 2, 4, 8, plus broken mechanisms.

Run:
  python experiments/dp_audit/run_study.py \
      --config experiments/dp_audit/configs/study.py --workdir runs/dp_audit

Smoke test: --config.rules="('clip',)" --config.epsilons="(8.0,)" --config.canaries=200

Gradient canaries (white-box, simulated with jaxleak's dp_aggregate): full
batch (sample rate 1), `steps` steps, `background` real per-example
gradients of `model` on `dataset` in every batch. One-run audits put all
`canaries` canaries into one run; many-run audits use `canaries`
independent runs of one canary each (Clopper-Pearson and GDP bounds).
Input canaries (black-box): `input_canaries` mislabelled mnist_subset
examples, cnn_mnist trained non-privately and with DP at `input_epsilon`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.rules = ("clip", "auto_s", "psac", "psasc")
  c.epsilons = (1.0, 2.0, 4.0, 8.0)
  c.delta = 1e-5
  c.confidence = 0.95
  c.canaries = 1000
  c.protocols = ("one_run", "many_runs")
  c.steps = 5
  c.sample_rate = 1.0
  c.background = 32
  c.model = "lenet"
  c.dataset = "digits"
  # PSASC with s = 2 has sensitivity C / 2: the audit checks the noise follows.
  c.psasc_s = 2.0
  c.seed = 0
  # Broken mechanisms, audited at the same canary budget.
  c.broken = ("half_noise", "half_sensitivity")
  c.broken_rules = ("clip", "psasc")
  c.broken_epsilons = (2.0, 8.0)
  # Black-box input canaries (set input_canaries = 0 to skip).
  c.input_canaries = 1000
  c.input_epsilon = 8.0
  c.input_rule = "clip"
  return c
