"""Tests for jaxleak.checkpoint: exact round trips, corruption, fallback."""

import glob
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxleak import checkpoint


def _state(seed=0):
  params = {"dense": {"kernel": jax.random.normal(jax.random.key(seed), (4, 3)),
                      "bias": jnp.arange(3.0)}}
  opt_state = optax.adam(1e-3).init(params)
  return {"params": params, "opt_state": opt_state,
          "key": jax.random.key(seed + 7), "count": jnp.int32(5)}


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.asarray(x).dtype == np.asarray(y).dtype


def test_round_trip_is_bit_exact_with_typed_keys_and_namedtuples(tmp_path):
  state = _state()
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, state, {"epoch": 1, "ledger": [[1.0, 0.01, 10]]})
    restored, meta = ckpt.restore(target=state)
  _assert_trees_equal(state, restored)
  assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
  assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(state["key"])
  assert meta == {"epoch": 1, "ledger": [[1.0, 0.01, 10]]}
  # The restored key draws the same numbers.
  np.testing.assert_array_equal(jax.random.normal(restored["key"], (5,)),
                                jax.random.normal(state["key"], (5,)))


def test_latest_step_and_max_to_keep(tmp_path):
  with checkpoint.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    assert ckpt.restore_latest(_state()) is None
    for step in (1, 2, 3):
      ckpt.save(step, _state(step), {"step": step})
    assert ckpt.steps == [2, 3]
    state, meta, step = ckpt.restore_latest(_state())
  assert step == 3 and meta["step"] == 3
  _assert_trees_equal(state, _state(3))


def _damage(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                                recursive=True) if os.path.isfile(f)]
  assert files, f"no array files found under {step_dir}"
  for f in files:
    data = open(f, "rb").read()
    with open(f, "wb") as fh:
      fh.write(data[: len(data) // 2])


def test_corrupt_checkpoint_raises_clear_error_and_falls_back(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.save(2, _state(2), {"step": 2})
    _damage(ckpt.step_path(2))
    with pytest.raises(checkpoint.CorruptCheckpointError, match=r"step 2 at .*2"):
      ckpt.restore(_state(), step=2)
    with pytest.raises(checkpoint.CorruptCheckpointError):
      ckpt.restore_latest(_state(), fallback=False)
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      state, _, step = ckpt.restore_latest(_state())
    assert step == 1
    assert any("trying the previous checkpoint" in str(w.message) for w in caught)
    _assert_trees_equal(state, _state(1))
    # The damaged checkpoint stays on disk for inspection; the good one is kept.
    assert ckpt.steps == [1, 2]


def test_silent_bit_flip_is_caught_by_checksum(tmp_path):
  """A flipped bit that still decodes must not resume from garbage."""
  state = {"w": jnp.zeros((256,), jnp.float32)}
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    # Rewrite the stored values through orbax itself with different numbers,
    # keeping our metadata (and its checksum) untouched.
    raw = {"w": np.ones((256,), np.float32)}
    import orbax.checkpoint as ocp
    ckpt._manager.delete(1)  # pylint: disable=protected-access
    ckpt._manager.save(1, args=ocp.args.Composite(  # pylint: disable=protected-access
        state=ocp.args.StandardSave(raw),
        meta=ocp.args.JsonSave({"_typed_keys": {},
                                "_checksum": checkpoint.tree_checksum(state)})))
    ckpt._manager.wait_until_finished()  # pylint: disable=protected-access
    with pytest.raises(checkpoint.CorruptCheckpointError, match="checksum"):
      ckpt.restore(state)


def test_missing_checkpoint_and_mismatched_target(tmp_path):
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
      ckpt.restore(_state())
    ckpt.save(1, {"w": jnp.zeros((3,))})
    with pytest.raises(FileNotFoundError, match="argument 'step'=5"):
      ckpt.restore(step=5)
    with pytest.raises(checkpoint.CorruptCheckpointError, match="target"):
      ckpt.restore(target={"w": jnp.zeros((4, 4)), "extra": jnp.zeros(())})


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="max_to_keep"):
    checkpoint.Checkpointer(tmp_path, max_to_keep=1)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match="metadata"):
      ckpt.save(1, {"w": jnp.zeros(())}, {"bad": object()})
    with pytest.raises(ValueError, match="'step'"):
      ckpt.save(-1, {"w": jnp.zeros(())})


def test_restore_without_target_passes_the_checksum(tmp_path):
  """Plain-dict restores (no target) must verify like typed restores."""
  state = _state()
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    raw, _ = ckpt.restore()
  np.testing.assert_array_equal(raw["params"]["dense"]["kernel"],
                                state["params"]["dense"]["kernel"])
  np.testing.assert_array_equal(raw["opt_state"][0]["mu"]["dense"]["bias"],
                                state["opt_state"][0].mu["dense"]["bias"])


def test_successful_restore_leaves_the_unraisable_hook_alone(tmp_path,
                                                             monkeypatch):
  """The hook that mutes aborted reads is installed for the read only; a
  restore that succeeds puts the caller's hook back."""
  import sys

  def mine(unraisable):
    del unraisable
  monkeypatch.setattr(sys, "unraisablehook", mine)
  state = {"w": jnp.arange(4.0)}
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"step": 1})
    restored, _ = ckpt.restore(state, step=1)
  assert sys.unraisablehook is mine
  np.testing.assert_array_equal(restored["w"], state["w"])


def test_failed_restore_leaves_no_event_loop_noise(tmp_path, monkeypatch):
  """Issue 20 item 8: a truncated checkpoint is one error, not dozens of
  "Event loop is closed" tracebacks from orbax's aborted reads."""
  import sys
  import time
  reported = []
  monkeypatch.setattr(sys, "unraisablehook",
                      lambda u: reported.append(str(u.exc_value)))
  state = {f"w{i}": jnp.full((64,), float(i)) for i in range(12)}
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, {"step": 1})
    _damage(ckpt.step_path(1))
    for _ in range(3):
      with pytest.raises(checkpoint.CorruptCheckpointError, match="step 1"):
        ckpt.restore(state, step=1)
  time.sleep(0.5)  # the aborted reads finish on TensorStore's threads
  assert not [r for r in reported if "Event loop is closed" in r]
  # Other unraisable errors still reach the previous hook.
  sys.unraisablehook(type("U", (), {"exc_value": ValueError("other")})())
  assert reported[-1] == "other"
