"""Sharded DP training: 8 devices equal 1 device; noise is drawn once; resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak import data
from jaxleak import dp_training
from jaxleak import models
from jaxleak import sharding
from jaxleak.dp import accounting


def _model(train):
  return models.create("mlp", train.num_classes, train.image_shape,
                       jax.random.key(0), hidden=(256,), act="tanh")


def _one_step(mesh, apply_fn, params, batch, *, sigma, path, momentum=0.9):
  rule = dp_training.make_weight_rule("psasc", r=0.1, s=2.0)
  opt = dp_training.make_dp_optimizer(rule, sigma, jax.random.key(42),
                                      expected_batch_size=48, learning_rate=0.5,
                                      momentum=momentum)
  step = dp_training.make_dp_train_step(apply_fn, rule, opt, mesh=mesh, path=path)
  opt_state = opt.init(params)
  if mesh is not None:
    params = sharding.replicate(mesh, params)
    opt_state = sharding.replicate(mesh, opt_state)
    batch = sharding.shard_batch(mesh, batch)
  new_params, _, metrics = step(params, opt_state, *batch)
  return jax.device_get(new_params), metrics


@pytest.mark.parametrize("path", ["layerwise", "two_pass", "vmap"])
def test_eight_device_step_equals_one_device_step(digits, path):
  train, _ = digits
  apply_fn, params = _model(train)
  idx, mask = data.poisson_batch_indices(len(train), 48 / len(train), seed=0,
                                         step=0, max_batch_size=64)
  batch = (train.images[idx], train.labels[idx], mask)
  one, m1 = _one_step(sharding.data_mesh(1), apply_fn, params, batch, sigma=1.3,
                      path=path)
  eight, m8 = _one_step(sharding.data_mesh(8), apply_fn, params, batch,
                        sigma=1.3, path=path)
  unsharded, _ = _one_step(None, apply_fn, params, batch, sigma=1.3, path=path)
  for a, b, c in zip(jax.tree.leaves(one), jax.tree.leaves(eight),
                     jax.tree.leaves(unsharded)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a, c, atol=1e-5, rtol=0)
  assert float(m8.batch_size) == float(np.sum(mask))
  assert float(m1.loss) == pytest.approx(float(m8.loss), rel=1e-5)
  # The step really moved the parameters (so the comparison is not vacuous).
  moved = max(float(jnp.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(one), jax.tree.leaves(params)))
  assert moved > 1e-3


def test_noise_is_drawn_once_not_per_device(digits):
  """With no real example the update is pure noise: std = lr*sigma*Delta/B."""
  train, _ = digits
  apply_fn, params = _model(train)
  batch = (train.images[:64], train.labels[:64], np.zeros(64, bool))
  sigma = 2.0
  new, m = _one_step(sharding.data_mesh(8), apply_fn, params, batch,
                     sigma=sigma, path="two_pass", momentum=None)
  assert float(m.batch_size) == 0.0
  delta = np.concatenate([np.ravel(a - b) for a, b in
                          zip(jax.tree.leaves(new), jax.tree.leaves(params))])
  sensitivity = 1.0 / 2.0  # psasc(C=1, s=2)
  want = 0.5 * sigma * sensitivity / 48
  assert delta.size > 15_000
  assert abs(np.std(delta) / want - 1) < 0.03, (np.std(delta), want)
  # Per-device noise would give sqrt(8) (independent) or 8x (identical) this.


def test_dp_training_learns_spends_epsilon_and_resumes_exactly(digits, tmp_path):
  train, test = digits
  apply_fn, params = _model(train)
  # RDP keeps calibration cheap; 8-device equality has its own test above.
  config = dp_training.DPTrainConfig(
      rule="psasc", target_epsilon=8.0, delta=1e-4, epochs=3,
      expected_batch_size=128, learning_rate=1.0, momentum=0.5,
      checkpoint_every=5, accountant="rdp")
  mesh = sharding.data_mesh(2)
  full = dp_training.train_dp_classifier(
      apply_fn, params, train, test, config, workdir=tmp_path / "a",
      progress=False, eval_every=11, mesh=mesh)
  assert full.steps == round(3 * len(train) / 128)
  want_eps = accounting.epsilon(noise_multiplier=full.noise_multiplier,
                                sample_rate=128 / len(train), steps=full.steps,
                                delta=1e-4, accountant="rdp")
  assert full.epsilon == pytest.approx(want_eps) and full.epsilon <= 8.0 + 1e-6
  assert full.test_accuracy > 0.6
  with pytest.raises(Exception, match="stopped after step 12"):
    dp_training.train_dp_classifier(
        apply_fn, params, train, test, config, workdir=tmp_path / "b",
        progress=False, eval_every=11, preempt_after_steps=12, mesh=mesh)
  resumed = dp_training.train_dp_classifier(
      apply_fn, params, train, test, config, workdir=tmp_path / "b",
      progress=False, eval_every=11, mesh=mesh)
  assert resumed.resumed_from == 12
  assert resumed.epsilon == full.epsilon
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)


def test_bad_configs_name_the_argument(digits):
  train, test = digits
  apply_fn, params = _model(train)
  bad = [
      ({"target_epsilon": None}, "exactly one of"),
      ({"expected_batch_size": 10**6}, "'expected_batch_size'"),
      ({"delta": 0.01}, "'delta'"),
      ({"rule": "magic"}, "'rule' must be one of"),
  ]
  for kwargs, match in bad:
    with pytest.raises(ValueError, match=match):
      dp_training.train_dp_classifier(
          apply_fn, params, train, test,
          dp_training.DPTrainConfig(**kwargs), progress=False)


def test_short_runs_evaluate_once_per_epoch_not_every_step():
  # `train-dp --epochs 2` on mnist_subset: 31 steps at q = 256 / 4000.
  assert dp_training.default_eval_every(31, 256 / 4000) == 16
  # Long runs: about 20 evaluations.
  assert dp_training.default_eval_every(6250, 256 / 4000) == 312
  assert dp_training.default_eval_every(3, 1.0) == 1


def test_epsilon_is_computed_once_per_evaluation_not_every_step(
    digits, monkeypatch):
  """Item 14: the ledger's epsilon (a PLD composition, ~1 s) runs once per
  eval interval (and once for the result), not on every step for the bar."""
  calls = []
  real = accounting.PrivacyLedger.epsilon

  def counted(self):
    calls.append(self.steps)
    return real(self)

  monkeypatch.setattr(accounting.PrivacyLedger, "epsilon", counted)
  train, test = digits
  apply_fn, params = models.create("mlp", train.num_classes, train.image_shape,
                                   jax.random.key(0), hidden=())
  config = dp_training.DPTrainConfig(
      rule="clip", target_epsilon=None, noise_multiplier=1.0, delta=1e-4,
      epochs=1, expected_batch_size=64, accountant="rdp")
  result = dp_training.train_dp_classifier(
      apply_fn, params, train, test, config, progress=True, eval_every=5,
      mesh=sharding.data_mesh(1))
  steps = result.steps
  assert steps == round(len(train) / 64) == 22
  evals = [h["step"] for h in result.history]
  assert evals == [5, 10, 15, 20, 22]
  # One per evaluation, at its step, and one for DPTrainResult.epsilon.
  assert calls == evals + [steps]
