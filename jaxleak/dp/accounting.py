"""Privacy accounting on dp-accounting: epsilon, noise calibration, a ledger.

The mechanism accounted for is the Poisson-subsampled Gaussian mechanism,
composed over steps: each step includes every example independently with
probability ``sample_rate`` and releases a sum of sensitivity ``Delta`` plus
``N(0, (noise_multiplier * Delta)^2)`` noise. This matches `dp_aggregate` fed
by `jaxleak.data.PoissonSampler` (add/remove-one adjacency).

``accountant="pld"`` (privacy loss distributions) is tight; ``"rdp"`` (Rényi
DP) is the classic, looser bound. Both are dp-accounting's own accountants.

dp-accounting is imported on first use, not with `jaxleak.dp`: it pulls in
SciPy (about 65 MB of resident memory and 2 s of import time), which code that
only builds or runs DP training steps never needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import logging
from typing import Any, TYPE_CHECKING

from jaxleak._src import validate

if TYPE_CHECKING:
  import dp_accounting  # pylint: disable=g-bad-import-order

__all__ = (
  "ACCOUNTANTS",
  "PrivacyLedger",
  "calibrate_noise",
  "dp_event",
  "epsilon",
)

ACCOUNTANTS = ("pld", "rdp")


def _dpa(submodule: str = ""):
  """``dp_accounting`` (or one of its submodules), imported on first use."""
  return importlib.import_module("dp_accounting" + (
      "." + submodule if submodule else ""))


def _make_accountant(accountant: str):
  validate.check_choice(accountant, "accountant", ACCOUNTANTS, fn="epsilon")
  if accountant == "pld":
    return _dpa("pld").PLDAccountant()
  return _dpa("rdp").RdpAccountant()


def _check(noise_multiplier, sample_rate, steps, fn):
  validate.check_positive(noise_multiplier, "noise_multiplier", fn=fn,
                          allow_zero=True)
  validate.check_in_range(sample_rate, "sample_rate", 0.0, 1.0, fn=fn,
                          inclusive=(False, True))
  if int(steps) != steps or steps < 0:
    raise ValueError(f"{fn}: argument 'steps' must be a non-negative integer, "
                     f"got {steps!r}")


def dp_event(noise_multiplier: float, sample_rate: float, steps: int
             ) -> dp_accounting.DpEvent:
  """The dp-accounting event for `steps` Poisson-sampled Gaussian steps."""
  _check(noise_multiplier, sample_rate, steps, "dp_event")
  return _dpa().SelfComposedDpEvent(
      _dpa().PoissonSampledDpEvent(
          sample_rate, _dpa().GaussianDpEvent(noise_multiplier)),
      int(steps))


def epsilon(*, noise_multiplier: float, sample_rate: float, steps: int,
            delta: float, accountant: str = "pld") -> float:
  """Epsilon spent by `steps` Poisson-subsampled Gaussian steps at `delta`.

  Returns ``inf`` for ``noise_multiplier = 0`` with ``steps > 0`` (no privacy),
  and 0 for ``steps = 0``.
  """
  _check(noise_multiplier, sample_rate, steps, "epsilon")
  validate.check_in_range(delta, "delta", 0.0, 1.0, fn="epsilon",
                          inclusive=(False, False))
  if steps == 0:
    return 0.0
  if noise_multiplier == 0:
    return float("inf")
  acc = _make_accountant(accountant)
  acc.compose(dp_event(noise_multiplier, sample_rate, steps))
  return float(acc.get_epsilon(delta))


def calibrate_noise(target_epsilon: float, *, sample_rate: float, steps: int,
                    delta: float, accountant: str = "pld",
                    tol: float = 1e-3) -> float:
  """Smallest noise multiplier whose epsilon is at most `target_epsilon`.

  Uses dp-accounting's `calibrate_dp_mechanism` (bracketed search).
  """
  fn = "calibrate_noise"
  validate.check_positive(target_epsilon, "target_epsilon", fn=fn)
  _check(1.0, sample_rate, steps, fn)
  validate.check_in_range(delta, "delta", 0.0, 1.0, fn=fn,
                          inclusive=(False, False))
  if steps == 0:
    return 0.0
  make_event = lambda sigma: dp_event(sigma, sample_rate, steps)
  with _quiet_rdp_search():
    return _calibrate(make_event, target_epsilon, sample_rate=sample_rate,
                      steps=steps, delta=delta, accountant=accountant, tol=tol)


class _DropRdpOrderWarnings(logging.Filter):
  """Drops dp-accounting's "_compute_log_a_frac failed to converge" lines.

  While the search tries small noise multipliers, RDP orders near 1 do not
  converge; dp-accounting excludes them (the bound stays valid) and logs one
  absl warning per order and trial: dozens of lines per calibration.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return "failed to converge" not in record.getMessage()


@contextlib.contextmanager
def _quiet_rdp_search():
  logger = logging.getLogger("absl")
  quiet = _DropRdpOrderWarnings()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def _calibrate(make_event, target_epsilon, *, sample_rate, steps, delta,
               accountant, tol) -> float:
  """`calibrate_noise` once its arguments are checked."""
  # RDP is fast at any sigma; PLD's discretisation blows up (minutes, GBs) at
  # tiny sigma, so PLD is only searched inside a bracket found from RDP: RDP
  # over-estimates epsilon, hence sigma_rdp is enough noise for PLD too.
  sigma_rdp = float(_dpa().calibrate_dp_mechanism(
      lambda: _make_accountant("rdp"), make_event, float(target_epsilon),
      float(delta), bracket_interval=_dpa().LowerEndpointAndGuess(
          1e-2, 1.0), tol=tol))
  if accountant == "rdp":
    return sigma_rdp
  low = 0.7 * sigma_rdp
  while low > 1e-3 and epsilon(noise_multiplier=low, sample_rate=sample_rate,
                               steps=steps, delta=delta) <= target_epsilon:
    low *= 0.7
  return float(_dpa().calibrate_dp_mechanism(
      lambda: _make_accountant(accountant), make_event, float(target_epsilon),
      float(delta),
      bracket_interval=_dpa().ExplicitBracketInterval(low, sigma_rdp),
      tol=tol))


# PLDAccountant's default discretisation (dp-accounting 0.4).
_PLD_INTERVAL = 1e-4
_EPSILON_MEMO: dict[tuple, float] = {}


@functools.lru_cache(maxsize=8)
def _one_step_pld(noise_multiplier: float, sample_rate: float):
  """One Poisson-sampled Gaussian step's PLD, as `PLDAccountant` builds it."""
  return _dpa("pld.privacy_loss_distribution").from_gaussian_mechanism(
      standard_deviation=noise_multiplier,
      value_discretization_interval=_PLD_INTERVAL, sampling_prob=sample_rate,
      neighboring_relation=_dpa(
          "privacy_accountant").NeighboringRelation.ADD_OR_REMOVE_ONE)


@dataclasses.dataclass
class PrivacyLedger:
  """Records every private step so epsilon can be recomputed after resume.

  Entries are ``[noise_multiplier, sample_rate, steps]`` runs; consecutive
  steps with equal settings are merged. `to_dict`/`from_dict` round-trip
  through the JSON metadata of a `jaxleak.checkpoint.Checkpointer`.
  """
  delta: float
  accountant: str = "pld"
  entries: list[list[float]] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    validate.check_in_range(self.delta, "delta", 0.0, 1.0, fn="PrivacyLedger",
                            inclusive=(False, False))
    validate.check_choice(self.accountant, "accountant", ACCOUNTANTS,
                          fn="PrivacyLedger")

  def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1
             ) -> None:
    _check(noise_multiplier, sample_rate, steps, "PrivacyLedger.record")
    if self.entries and self.entries[-1][:2] == [float(noise_multiplier),
                                                 float(sample_rate)]:
      self.entries[-1][2] += int(steps)
    else:
      self.entries.append([float(noise_multiplier), float(sample_rate),
                           int(steps)])

  @property
  def steps(self) -> int:
    return int(sum(e[2] for e in self.entries))

  def epsilon(self) -> float:
    """Epsilon of everything recorded so far, at the ledger's delta.

    Equal, bit for bit, to composing the ledger's events in dp-accounting's
    `PLDAccountant` (or `RdpAccountant`). For PLD the one-step privacy loss
    distribution of each (sigma, q), which is most of the cost (about a second
    to discretise), is built once per process and only self-composed here; the
    result for unchanged entries is remembered.
    """
    key = (self.delta, self.accountant,
           tuple(tuple(e) for e in self.entries))
    if key not in _EPSILON_MEMO:
      _EPSILON_MEMO.clear()  # one ledger is queried at a time; keep it small
      _EPSILON_MEMO[key] = self._compute_epsilon()
    return _EPSILON_MEMO[key]

  def _compute_epsilon(self) -> float:
    if self.steps == 0:
      return 0.0
    if any(e[0] == 0 and e[2] > 0 for e in self.entries):
      return float("inf")
    if self.accountant == "pld":
      # The steps of PLDAccountant._maybe_compose for Poisson-sampled Gaussian
      # events, with the one-step distribution cached.
      total = _dpa("pld.privacy_loss_distribution").identity(
          value_discretization_interval=_PLD_INTERVAL)
      for sigma, q, n in self.entries:
        if q > 0 and n > 0:
          total = total.compose(_one_step_pld(sigma, q).self_compose(int(n)))
      return float(total.get_epsilon_for_delta(self.delta))
    acc = _make_accountant(self.accountant)
    for sigma, q, n in self.entries:
      acc.compose(dp_event(sigma, q, int(n)))
    return float(acc.get_epsilon(self.delta))

  def to_dict(self) -> dict[str, Any]:
    return {"delta": self.delta, "accountant": self.accountant,
            "entries": [list(e) for e in self.entries]}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> PrivacyLedger:
    return cls(delta=float(d["delta"]), accountant=str(d["accountant"]),
               entries=[[float(a), float(b), int(c)] for a, b, c in d["entries"]])
