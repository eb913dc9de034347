"""Evaluation harness: accuracy, distance to retraining, time and MIA.

`evaluate_unlearning` runs retraining (the reference) and any other
unlearners on the same forget set and reports, per method:

* ``test_accuracy``, ``retain_accuracy``, ``forget_accuracy``;
* ``distance_to_retrain`` = ||w - w_retrain||_2 over all parameters (and
  the original model's distance, the "do nothing" baseline);
* ``wall_time_s`` (end to end), ``compile_time_s`` (the part spent tracing
  and compiling, from `jax.monitoring` events), ``run_time_s`` (the
  difference; the median over ``repeats`` runs), ``speedup_vs_retrain``
  (ratio of run times, i.e. without
  compilation, which a deployed unlearner pays once) and
  ``speedup_end_to_end`` (ratio of wall times). ``warmup=True`` runs each
  method once untimed first, so compilation is cached entirely;
* membership inference on the forget set R against held-out test data
  (non-members): the loss and modified-entropy threshold attacks (ROC AUC,
  best balanced accuracy, TPR at 1% / 0.1% FPR), the MIA-efficacy fraction
  and, given shadow models, offline LiRA. A retrained model sees R as
  non-members, so its forget-set AUC is ~0.5; a good unlearner matches the
  retrained model's numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import time
from typing import Any, NamedTuple

import jax
from jax.flatten_util import ravel_pytree
import numpy as np

from jaxleak.attacks.membership import lira as lira_lib
from jaxleak.attacks.membership import metrics as mia_metrics
from jaxleak.attacks.membership import signals
from jaxleak.attacks.membership import threshold
from jaxleak.data.dataset import as_arrays
from jaxleak.unlearning import base

Params = Any

__all__ = ("Shadows", "MethodResult", "model_metrics", "evaluate_unlearning")


class Shadows(NamedTuple):
  """Shadow models for offline LiRA: stacked params and their IN masks over D."""
  params: Any
  in_masks: np.ndarray


class MethodResult(NamedTuple):
  """One method's parameters, scalar metrics and MIA ROC curves."""
  params: Params
  metrics: dict[str, float]
  roc: dict[str, mia_metrics.AttackMetrics]


def model_metrics(apply_fn: Callable, params: Params, train: Any, test: Any,
                  forget: np.ndarray, *, reference: Params | None = None,
                  shadow_stats: tuple[np.ndarray, np.ndarray, np.ndarray,
                                      np.ndarray] | None = None,
                  seed: int = 0) -> tuple[dict[str, float],
                                          dict[str, mia_metrics.AttackMetrics]]:
  """Accuracies, distance to `reference` and forget-set MIA of one model.

  Args:
    apply_fn: the model.
    params: its parameters.
    train: the training set D (Dataset or arrays).
    test: held-out data (the non-members).
    forget: indices R into D.
    reference: parameters to measure ||params - reference|| against.
    shadow_stats: (phi_forget [S, r], in_forget [S, r], phi_test [S, k],
      in_test [S, k]) from shadow models, enabling offline LiRA.
    seed: seed of the MIA-efficacy classifier.

  Returns:
    `(scalars, roc)` where roc maps attack name -> AttackMetrics.
  """
  x_tr, y_tr = as_arrays(train, fn="model_metrics", name="train")
  x_te, y_te = as_arrays(test, fn="model_metrics", name="test")
  logits = signals.model_logits(apply_fn, params, x_tr)
  logits_te = signals.model_logits(apply_fn, params, x_te)
  keep = np.ones(len(y_tr), bool)
  keep[forget] = False
  lg_f, y_f = logits[forget], y_tr[forget]
  lg_r, y_r = logits[keep], y_tr[keep]

  def acc(lg, y):
    return float(np.mean(np.argmax(lg, -1) == y)) if len(y) else float("nan")

  out = {"test_accuracy": acc(logits_te, y_te),
         "retain_accuracy": acc(lg_r, y_r),
         "forget_accuracy": acc(lg_f, y_f)}
  if reference is not None:
    w, _ = ravel_pytree(params)
    w_ref, _ = ravel_pytree(reference)
    out["distance_to_retrain"] = float(np.linalg.norm(np.asarray(w - w_ref)))
  roc = {}
  if len(forget):
    for name in ("loss", "modified_entropy"):
      roc[name] = threshold.threshold_attack(name, lg_f, y_f, logits_te, y_te)
    out.update(roc["loss"].summary("mia_loss_"))
    out["mia_mentr_auc"] = roc["modified_entropy"].auc
    out["mia_efficacy"] = threshold.mia_efficacy(
        threshold.efficacy_features(lg_r, y_r),
        threshold.efficacy_features(logits_te, y_te),
        threshold.efficacy_features(lg_f, y_f), seed=seed)
    if shadow_stats is not None:
      phi_f, in_f, phi_t, in_t = shadow_stats
      target_f = np.asarray(signals.logit_scaled_confidence(lg_f, y_f))
      target_t = np.asarray(signals.logit_scaled_confidence(logits_te, y_te))
      s_f = lira_lib.lira_offline(target_f, phi_f, in_f, global_variance=True)
      s_t = lira_lib.lira_offline(target_t, phi_t, in_t, global_variance=True)
      roc["lira_offline"] = mia_metrics.attack_metrics(s_f, s_t)
      out.update(roc["lira_offline"].summary("mia_lira_"))
  return out, roc


# JAX reports tracing, lowering and XLA compilation through jax.monitoring;
# summing them separates compilation from execution in the wall time.
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compile_seconds = [0.0]
_listening = [False]


def _on_event(name: str, seconds: float, **_) -> None:
  if name in _COMPILE_EVENTS:
    _compile_seconds[0] += seconds


def _timed(fn: Callable[[], Params], warmup: bool, repeats: int = 1
           ) -> tuple[Params, float, float, float]:
  """Runs `fn` `repeats` times (after an untimed run if `warmup`).

  Returns:
    (result, wall seconds of the first timed run, of which compiling,
    median over the runs of wall minus compile seconds).
  """
  if not _listening[0]:
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    _listening[0] = True
  if warmup:
    jax.block_until_ready(fn())
  walls, compiles = [], []
  for _ in range(max(1, int(repeats))):
    before = _compile_seconds[0]
    start = time.perf_counter()
    params = jax.block_until_ready(fn())
    walls.append(time.perf_counter() - start)
    compiles.append(min(_compile_seconds[0] - before, walls[-1]))
  runs = [w - c for w, c in zip(walls, compiles)]
  return params, walls[0], compiles[0], float(np.median(runs))


def evaluate_unlearning(model: base.Model, history: Any, forget_indices: Any,
                        train: Any, test: Any,
                        methods: Mapping[str, base.Unlearner], *,
                        shadows: Shadows | None = None, warmup: bool = False,
                        repeats: int = 1, seed: int = 0,
                        on_method: Callable[[str], None] | None = None
                        ) -> dict[str, MethodResult]:
  """Runs retraining and `methods` on one forget set and evaluates them all.

  Args:
    model: the trained model.
    history: its TrainingHistory.
    forget_indices: R (indices into `train`).
    train: the training set D.
    test: held-out data, the non-members of the MIA.
    methods: name -> unlearner (e.g. `unlearning.get("finetune", epochs=2)`);
      "retrain" is always run first as the reference and need not be given.
    shadows: optional shadow models (trained on subsets of D) for LiRA.
    warmup: run each method once untimed first, so that wall times exclude
      JIT compilation (doubles the cost).
    repeats: time each method this many times; run times are the median
      (robust to other jobs on a shared machine).
    seed: MIA-efficacy seed.
    on_method: called with each method name before it runs (progress).

  Returns:
    name -> MethodResult for "original", "retrain" and every method.
  """
  fn = "evaluate_unlearning"
  prob = base.prepare(model, history, forget_indices, train, fn)
  forget = prob.forget
  shadow_stats = None
  if shadows is not None:
    x_tr, y_tr = as_arrays(train, fn=fn, name="train")
    x_te, y_te = as_arrays(test, fn=fn, name="test")
    in_masks = np.asarray(shadows.in_masks, bool)
    phi_f = lira_lib.shadow_statistics(prob.apply_fn, shadows.params,
                                       x_tr[forget], y_tr[forget])
    phi_t = lira_lib.shadow_statistics(prob.apply_fn, shadows.params, x_te,
                                       y_te)
    # Test examples are outside D, hence OUT for every shadow.
    shadow_stats = (phi_f, in_masks[:, forget], phi_t,
                    np.zeros(phi_t.shape, bool))

  runs: dict[str, base.Unlearner] = {"retrain": base.get("retrain")}
  runs.update({k: v for k, v in methods.items() if k != "retrain"})
  results: dict[str, MethodResult] = {}
  times: dict[str, tuple[float, float, float]] = {}
  params_of: dict[str, Params] = {}
  for name, unlearner in runs.items():
    if on_method is not None:
      on_method(name)
    params, wall, compiling, run = _timed(
        lambda u=unlearner: u(model, history, forget, train), warmup, repeats)
    params_of[name], times[name] = params, (wall, compiling, run)
  reference = params_of["retrain"]
  order = {"original": model.params, **params_of}
  for name, params in order.items():
    scalars, roc = model_metrics(prob.apply_fn, params, train, test, forget,
                                 reference=reference,
                                 shadow_stats=shadow_stats, seed=seed)
    wall, compiling, run = times.get(name, (0.0, 0.0, 0.0))
    ref_wall, _, ref_run = times["retrain"]
    scalars["wall_time_s"] = wall
    scalars["compile_time_s"] = compiling
    scalars["run_time_s"] = run
    scalars["speedup_vs_retrain"] = ref_run / run if run > 0 else float("nan")
    scalars["speedup_end_to_end"] = ref_wall / wall if wall > 0 else float(
        "nan")
    results[name] = MethodResult(params, scalars, roc)
  return results
