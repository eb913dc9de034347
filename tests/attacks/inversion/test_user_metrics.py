"""User-level leakage metrics (attribute accuracy, similarity, identification)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxleak.attacks.inversion import user_metrics as um


def test_embed_is_the_input_of_the_output_layer(get_model):
  apply_fn, params = get_model("mlp", shape=(8, 8, 1), hidden=(16,))
  x = np.random.default_rng(0).uniform(size=(5, 8, 8, 1)).astype(np.float32)
  feats = um.embed(apply_fn, params, x)
  assert feats.shape == (5, 16)
  head = params["params"]["head"]
  logits = feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
  np.testing.assert_allclose(logits, um.judge_logits(apply_fn, params, x),
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="no layer named 'nope'"):
    um.embed(apply_fn, params, x, layer="nope")
  with pytest.raises(TypeError, match="'apply_fn' must be a model"):
    um.embed(lambda p, x: x, params, x)


def test_attribute_accuracy():
  assert um.attribute_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
  with pytest.raises(ValueError, match="'predicted' and 'attributes'"):
    um.attribute_accuracy([1, 2], [1])


def _axes(n, d=6):
  return np.eye(d)[:n]


def test_representative_similarity_against_batch_pairwise_range():
  e = _axes(3)
  # User 0: batch of two copies of e0 (pairwise 1), representative e0.
  # User 1: batch {e1, e2} (pairwise 0), representative (e1 + e2).
  sim = um.representative_similarity(
      [e[0], (e[1] + e[2])[None]], [np.stack([e[0], 2 * e[0]]),
                                    np.stack([e[1], e[2]])])
  np.testing.assert_allclose(sim["per_user"], [1.0, 1 / np.sqrt(2)])
  assert sim["mean"] == pytest.approx((1 + 1 / np.sqrt(2)) / 2)
  assert sim["per_user_batch_pairwise"] == pytest.approx([1.0, 0.0])
  assert (sim["batch_pairwise_min"], sim["batch_pairwise_max"]) == (
      pytest.approx(0.0), pytest.approx(1.0))
  with pytest.raises(ValueError, match="one entry per user"):
    um.representative_similarity([e[0]], [])


def test_identification_rate():
  e = _axes(3)
  batches = [np.stack([e[i], e[i] + 0.1 * e[(i + 1) % 3]]) for i in range(3)]
  assert um.identification_rate([e[0], e[1], e[2]], batches) == 1.0
  assert um.identification_rate([e[1], e[2], e[0]], batches) == 0.0
  # User 1's representative points at user 0's batch; user 2's mixes e0
  # and e2 but is closer to its own batch (which holds some e0).
  assert um.identification_rate([e[0], e[0], e[0] + e[2]], batches) == (
      pytest.approx(2 / 3))
  # Users 0 and 1 hold the same batch: a tie counts as a miss.
  same = [batches[0], batches[0], batches[2]]
  assert um.identification_rate([e[0], e[0], e[2]], same) == (
      pytest.approx(1 / 3))
  with pytest.raises(ValueError, match=">= 2"):
    um.identification_rate([e[0]], batches[:1])


def test_score_users_end_to_end(get_model):
  apply_fn, params = get_model("mlp", shape=(8, 8, 1), hidden=(16,))
  rng = np.random.default_rng(1)
  batches = [rng.uniform(size=(4, 8, 8, 1)).astype(np.float32)
             for _ in range(3)]
  reps = [b[:1] for b in batches]  # Each representative is a batch image.
  logits = um.judge_logits(apply_fn, params, np.concatenate(reps))
  attrs = [int(np.argmax(v)) for v in logits]
  out = um.score_users(apply_fn, params, reps, batches, attrs)
  assert out["attribute_accuracy"] == 1.0
  assert out["predicted"] == attrs
  assert -1 <= out["representative_similarity"] <= 1
  assert 0 <= out["identification_rate"] <= 1
  assert jnp.isfinite(out["batch_pairwise_similarity"]["batch_pairwise_mean"])
