"""Accounting equals dp-accounting called directly; calibration; ledger."""

import dp_accounting
from dp_accounting import pld
from dp_accounting import rdp
import pytest

from jaxleak.dp import accounting


def _direct(accountant, sigma, q, steps, delta):
  acc = pld.PLDAccountant() if accountant == "pld" else rdp.RdpAccountant()
  acc.compose(dp_accounting.SelfComposedDpEvent(
      dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
      steps))
  return acc.get_epsilon(delta)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_epsilon_equals_dp_accounting(accountant):
  args = dict(noise_multiplier=1.1, sample_rate=0.064, steps=250, delta=1e-5)
  ours = accounting.epsilon(accountant=accountant, **args)
  assert ours == _direct(accountant, 1.1, 0.064, 250, 1e-5)
  assert 0.5 < ours < 20


def test_reference_value_from_the_environment_notes():
  # sigma=1, q=256/60000, 2344 steps, delta=1e-5: RDP 1.3523, PLD 1.0999.
  kw = dict(noise_multiplier=1.0, sample_rate=256 / 60000, steps=2344, delta=1e-5)
  assert accounting.epsilon(accountant="rdp", **kw) == pytest.approx(1.3523, abs=1e-4)
  assert accounting.epsilon(accountant="pld", **kw) == pytest.approx(1.0999, abs=1e-4)


def test_calibrate_noise_hits_the_target_from_below():
  kw = dict(sample_rate=0.05, steps=100, delta=1e-5)
  sigma = accounting.calibrate_noise(2.0, accountant="rdp", **kw)
  eps = accounting.epsilon(noise_multiplier=sigma, accountant="rdp", **kw)
  assert 1.99 < eps <= 2.0
  assert accounting.epsilon(noise_multiplier=sigma * 0.97, accountant="rdp", **kw) > 2.0


def test_calibration_does_not_log_dp_accountings_rdp_order_warnings(caplog):
  # The audit's eps-1 calibration (q = 256/4000, 15 epochs) printed 48 lines
  # "_compute_log_a_frac failed to converge ..." into the main job's output.
  kw = dict(sample_rate=0.064, steps=234, delta=1e-5)
  with caplog.at_level("WARNING", logger="absl"):
    _direct("rdp", 1.0, kw["sample_rate"], kw["steps"], kw["delta"])
  assert any("failed to converge" in r.getMessage() for r in caplog.records)
  caplog.clear()
  with caplog.at_level("WARNING", logger="absl"):
    sigma = accounting.calibrate_noise(1.0, accountant="rdp", **kw)
  assert not [r for r in caplog.records if "failed to converge" in r.getMessage()]
  eps = accounting.epsilon(noise_multiplier=sigma, accountant="rdp", **kw)
  assert 0.99 < eps <= 1.0
  with caplog.at_level("WARNING", logger="absl"):  # the filter is removed
    _direct("rdp", 1.0, kw["sample_rate"], kw["steps"], kw["delta"])
  assert any("failed to converge" in r.getMessage() for r in caplog.records)


def test_edge_cases_and_errors():
  kw = dict(sample_rate=0.1, delta=1e-5)
  assert accounting.epsilon(noise_multiplier=1.0, steps=0, **kw) == 0.0
  assert accounting.epsilon(noise_multiplier=0.0, steps=3, **kw) == float("inf")
  with pytest.raises(ValueError, match="'sample_rate'"):
    accounting.epsilon(noise_multiplier=1.0, sample_rate=1.5, steps=1, delta=1e-5)
  with pytest.raises(ValueError, match="'delta'"):
    accounting.epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=1, delta=0.0)
  with pytest.raises(ValueError, match="'accountant' must be one of"):
    accounting.epsilon(noise_multiplier=1.0, steps=1, accountant="prv", **kw)
  with pytest.raises(ValueError, match="'target_epsilon'"):
    accounting.calibrate_noise(-1.0, steps=10, **kw)


def test_ledger_composes_runs_and_round_trips():
  ledger = accounting.PrivacyLedger(delta=1e-5, accountant="rdp")
  for _ in range(30):
    ledger.record(1.2, 0.05)
  ledger.record(2.0, 0.05, steps=10)
  assert ledger.entries == [[1.2, 0.05, 30], [2.0, 0.05, 10]]
  restored = accounting.PrivacyLedger.from_dict(ledger.to_dict())
  assert restored.epsilon() == ledger.epsilon()
  direct = rdp.RdpAccountant()
  for sigma, steps in ((1.2, 30), (2.0, 10)):
    direct.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(sigma)),
        steps))
  assert ledger.epsilon() == direct.get_epsilon(1e-5)


def test_ledger_epsilon_is_the_accountants_and_builds_each_step_pld_once():
  accounting._one_step_pld.cache_clear()
  ledger = accounting.PrivacyLedger(delta=1e-5)
  ledger.record(1.1, 0.01, steps=40)
  first = ledger.epsilon()
  ledger.record(1.1, 0.01, steps=10)
  ledger.record(2.0, 0.02, steps=5)
  second = ledger.epsilon()
  # Bit-identical to composing the same events in dp-accounting's accountant.
  acc = pld.PLDAccountant()
  acc.compose(accounting.dp_event(1.1, 0.01, 50))
  acc.compose(accounting.dp_event(2.0, 0.02, 5))
  assert second == float(acc.get_epsilon(1e-5))
  assert first == accounting.epsilon(noise_multiplier=1.1, sample_rate=0.01,
                                     steps=40, delta=1e-5)
  assert second > first
  info = accounting._one_step_pld.cache_info()
  assert info.misses == 2 and info.hits == 1  # one build per (sigma, q)
  assert ledger.epsilon() == second  # remembered
  assert accounting._one_step_pld.cache_info().hits == 1
