"""Checkpoints of any pytree plus JSON metadata, on orbax's CheckpointManager.

One small wrapper used by every long-running jaxleak job (training, DP
training with its privacy ledger, attacks, unlearning history). A checkpoint
holds a state pytree (params, optimiser state, typed RNG keys, ledger arrays)
and a JSON dict (step, config, ledger, sampler state).

Guarantees:
  * Saves are atomic: orbax writes to a temporary directory and renames it on
    success, so a run killed mid-save leaves the previous checkpoint intact.
  * Restores are bit-exact: arrays round-trip unchanged, typed PRNG keys come
    back as typed keys of the same implementation, and a SHA-256 checksum of
    every leaf is verified on restore, so silent on-disk corruption raises
    `CorruptCheckpointError` instead of resuming from garbage.
  * `restore_latest(..., fallback=True)` skips a corrupt newest checkpoint and
    resumes from the newest good one; older checkpoints are never deleted by a
    failed restore (``max_to_keep`` >= 2 keeps a previous good one on disk).
  * `restore_metadata` reads a checkpoint's JSON without touching its arrays,
    so a caller can tell "another run" from "damaged" before restoring
    (`jaxleak.runloop` does).

The V0 ``CheckpointManager`` API is used because it is what orbax-checkpoint
0.12 documents for training loops; switch to ``orbax.checkpoint.v1`` once it
becomes the top-level API.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import hashlib
import json
import logging
import os
import sys
from typing import Any, Self
import warnings

import jax
import numpy as np

__all__ = (
  "CheckpointError",
  "Checkpointer",
  "CorruptCheckpointError",
  "tree_checksum",
)

_KEYS_FIELD = "_typed_keys"
_CHECKSUM_FIELD = "_checksum"

def _ocp():
  """``orbax.checkpoint``, imported when a `Checkpointer` is made.

  Importing it (with TensorStore) costs about 25 MB of resident memory, which
  modules that merely can checkpoint (every training loop) should not charge
  to runs that never do.
  """
  import orbax.checkpoint  # pylint: disable=g-import-not-at-top
  return orbax.checkpoint


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read."""


class CorruptCheckpointError(CheckpointError):
  """A checkpoint exists but its contents are unreadable or fail the checksum."""


def _one_line(e: BaseException, limit: int = 300) -> str:
  lines = str(e).strip().splitlines()
  return (lines[0] if lines else type(e).__name__)[:limit]


@contextlib.contextmanager
def _quiet_orbax():
  """Mutes orbax's error logs while a restore that may fail is attempted.

  A truncated checkpoint makes orbax log the same parse error several times
  (and asyncio report its aborted reads); the `CorruptCheckpointError` raised
  here already says which step is unreadable and why.
  """
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  levels = [lg.level for lg in loggers]
  for lg in loggers:
    lg.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    for lg, level in zip(loggers, levels):
      lg.setLevel(level)


def _mute_closed_loop_errors() -> Callable[[Any], None]:
  """Drops the "Event loop is closed" errors a failed restore leaves behind.

  When orbax's restore of a damaged checkpoint fails, its asyncio loop closes
  while TensorStore reads are still in flight; each read that finishes later
  calls back into the closed loop from a TensorStore thread, and TensorStore
  reports the RuntimeError through `sys.unraisablehook` (a traceback per read,
  dozens per checkpoint). They say nothing beyond the `CorruptCheckpointError`
  already raised, so the hook skips exactly this error and passes every other
  one on. `restore` installs it before reading, since reads can finish while
  the failure is still propagating (seen on a loaded machine), and keeps it
  after a failed restore, whose aborted reads finish later; after a
  successful one it puts the previous hook back. Returns the hook that was
  installed before.
  """
  previous = sys.unraisablehook
  if getattr(previous, "jaxleak_mutes_closed_loop", False):
    return previous

  def hook(unraisable):
    exc = unraisable.exc_value
    if not (isinstance(exc, RuntimeError)
            and str(exc) == "Event loop is closed"):
      previous(unraisable)

  hook.jaxleak_mutes_closed_loop = True
  sys.unraisablehook = hook
  return previous


def _is_typed_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key)


def _strip_keys(tree: Any) -> tuple[Any, dict[str, str]]:
  """Replaces typed PRNG keys by their raw uint32 data; returns impl names."""
  impls = {}
  paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  out = []
  for path, leaf in paths_leaves:
    if _is_typed_key(leaf):
      impls[jax.tree_util.keystr(path)] = str(jax.random.key_impl(leaf))
      leaf = jax.random.key_data(leaf)
    out.append(leaf)
  return jax.tree.unflatten(treedef, out), impls


def _wrap_keys(tree: Any, impls: dict[str, str]) -> Any:
  if not impls:
    return tree
  def rewrap(path, leaf):
    impl = impls.get(jax.tree_util.keystr(path))
    return leaf if impl is None else jax.random.wrap_key_data(leaf, impl=impl)
  return jax.tree_util.tree_map_with_path(rewrap, tree)


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def tree_checksum(tree: Any) -> str:
  """SHA-256 over every leaf's path, dtype, shape and bytes.

  Paths are reduced to their plain key names and sorted, so the checksum does
  not depend on container types: a NamedTuple optimiser state restored as a
  dict (no `target`) hashes like the original.
  """
  entries = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    entries.append(("/".join(_key_name(k) for k in path), leaf))
  digest = hashlib.sha256()
  for name, leaf in sorted(entries, key=lambda e: e[0]):
    arr = np.asarray(leaf)
    digest.update(name.encode())
    digest.update(f"{arr.dtype}{arr.shape}".encode())
    digest.update(np.ascontiguousarray(arr).tobytes())
  return digest.hexdigest()


def _abstract(tree: Any) -> Any:
  def leaf_struct(x):
    if _is_typed_key(x):
      x = jax.random.key_data(x)
    x = np.asarray(x) if not hasattr(x, "dtype") else x
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype)
  return jax.tree.map(leaf_struct, tree)


class Checkpointer:
  """Saves and restores `(state pytree, JSON metadata)` pairs by step.

  Example:
    >>> ckpt = Checkpointer("/tmp/run/checkpoints")            # doctest: +SKIP
    >>> ckpt.save(100, {"params": params, "key": key}, {"epoch": 3})  # doctest: +SKIP
    >>> state, meta, step = ckpt.restore_latest(target=state)  # doctest: +SKIP

  Args:
    directory: folder holding one sub-folder per step (created if missing).
    max_to_keep: how many of the newest checkpoints to keep (at least 2, so a
      previous good checkpoint survives a corrupt newest one).
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3):
    if int(max_to_keep) < 2:
      raise ValueError(
          "Checkpointer: argument 'max_to_keep' must be >= 2 so that a previous "
          f"good checkpoint survives a corrupt newest one, got {max_to_keep!r}")
    self.directory = os.path.abspath(os.fspath(directory))
    os.makedirs(self.directory, exist_ok=True)
    options = _ocp().CheckpointManagerOptions(
        max_to_keep=int(max_to_keep),
        # Synchronous saves: a training step never races a half-written file.
        enable_async_checkpointing=False,
        create=True,
    )
    with _quiet_orbax():  # it reads every step's (maybe damaged) metadata
      self._manager = _ocp().CheckpointManager(self.directory, options=options)

  # -- queries ---------------------------------------------------------------
  @property
  def steps(self) -> list[int]:
    """All checkpointed steps, oldest first."""
    with _quiet_orbax():
      self._manager.reload()
      return sorted(self._manager.all_steps())

  @property
  def latest_step(self) -> int | None:
    steps = self.steps
    return steps[-1] if steps else None

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(int(step)))

  # -- save --------------------------------------------------------------------
  def save(self, step: int, state: Any, metadata: dict[str, Any] | None = None
           ) -> None:
    """Writes `state` and `metadata` as checkpoint `step` (atomically).

    Args:
      step: a non-negative integer; saving an existing step overwrites it.
      state: any pytree of arrays; typed PRNG keys are allowed.
      metadata: a JSON-serialisable dict (step, config, ledger, ...).

    Raises:
      CheckpointError: if metadata is not JSON-serialisable or the write fails.
    """
    step = int(step)
    if step < 0:
      raise ValueError(f"Checkpointer.save: argument 'step' must be >= 0, got {step}")
    raw, impls = _strip_keys(state)
    raw = jax.device_get(raw)
    meta = dict(metadata or {})
    meta[_KEYS_FIELD] = impls
    meta[_CHECKSUM_FIELD] = tree_checksum(raw)
    try:
      json.dumps(meta)
    except TypeError as e:
      raise CheckpointError(
          f"Checkpointer.save: argument 'metadata' is not JSON-serialisable: {e}"
      ) from e
    if step in self._manager.all_steps():
      self._manager.delete(step)
    try:
      self._manager.save(
          step,
          args=_ocp().args.Composite(
              state=_ocp().args.StandardSave(raw),
              meta=_ocp().args.JsonSave(meta),
          ),
          force=True,
      )
      self._manager.wait_until_finished()
    except Exception as e:  # orbax raises many types; name the path.
      raise CheckpointError(
          f"could not write checkpoint step {step} to {self.step_path(step)}: {e}"
      ) from e

  # -- restore -----------------------------------------------------------------
  def restore_metadata(self, step: int) -> dict[str, Any]:
    """The JSON metadata of checkpoint `step`, without reading any array.

    Cheap enough to check which run a checkpoint belongs to before restoring
    arrays into a target of possibly another structure.

    Raises:
      CorruptCheckpointError: the metadata is unreadable or not jaxleak's.
    """
    meta = self._read_meta(int(step))
    meta.pop(_KEYS_FIELD, None)
    meta.pop(_CHECKSUM_FIELD, None)
    return meta

  def _read_meta(self, step: int) -> dict[str, Any]:
    """Step's raw metadata (with jaxleak's key and checksum fields)."""
    path = self.step_path(step)
    try:
      with _quiet_orbax():
        meta = self._manager.restore(
            step, args=_ocp().args.Composite(meta=_ocp().args.JsonRestore())
        ).meta
    except Exception as e:
      raise CorruptCheckpointError(
          f"checkpoint step {step} at {path} has unreadable metadata: "
          f"{_one_line(e)}") from e
    if not isinstance(meta, dict) or _CHECKSUM_FIELD not in meta:
      raise CorruptCheckpointError(
          f"checkpoint step {step} at {path} has no jaxleak metadata "
          "(was it written by another tool, or truncated?)")
    return dict(meta)

  def restore(self, target: Any = None, step: int | None = None
              ) -> tuple[Any, dict[str, Any]]:
    """Reads checkpoint `step` (default: the newest).

    Args:
      target: a pytree with the structure, shapes and dtypes to restore into
        (e.g. freshly initialised params and optimiser state). Needed to get
        NamedTuple optimiser states back; None restores plain dicts/lists.
      step: which step; None means the newest.

    Returns:
      `(state, metadata)`.

    Raises:
      FileNotFoundError: no checkpoint (or not that step) in the directory.
      CorruptCheckpointError: the checkpoint is unreadable, does not match
        `target`, or fails its checksum.
    """
    steps = self.steps
    if step is None:
      if not steps:
        raise FileNotFoundError(
            f"no checkpoint found in {self.directory} (argument 'directory')")
      step = steps[-1]
    step = int(step)
    if step not in steps:
      raise FileNotFoundError(
          f"Checkpointer.restore: argument 'step'={step} has no checkpoint in "
          f"{self.directory}; available steps: {steps}")
    path = self.step_path(step)
    meta = self._read_meta(step)
    impls = meta.pop(_KEYS_FIELD, {})
    checksum = meta.pop(_CHECKSUM_FIELD)
    args = _ocp().args
    restore_arg = (args.StandardRestore() if target is None
                   else args.StandardRestore(_abstract(target)))
    previous_hook = _mute_closed_loop_errors()
    try:
      with _quiet_orbax():
        raw = self._manager.restore(
            step, args=args.Composite(state=restore_arg)).state
    except Exception as e:
      raise CorruptCheckpointError(
          f"checkpoint step {step} at {path} cannot be restored (truncated, "
          "damaged, or saved from a pytree unlike argument 'target'): "
          f"{type(e).__name__}: {_one_line(e)}") from e
    sys.unraisablehook = previous_hook  # nothing in flight: unmute
    if tree_checksum(raw) != checksum:
      raise CorruptCheckpointError(
          f"checkpoint step {step} at {path} fails its checksum: the files were "
          "modified or damaged after saving")
    return _wrap_keys(raw, impls), meta

  def restore_latest(self, target: Any = None, *, fallback: bool = True
                     ) -> tuple[Any, dict[str, Any], int] | None:
    """Restores the newest good checkpoint, or returns None if there is none.

    With `fallback=True`, a corrupt newest checkpoint is reported with a
    warning and the next older one is tried; the corrupt one is left on disk
    for inspection. With `fallback=False` the error propagates.

    Raises:
      CorruptCheckpointError: every checkpoint present is corrupt (or the
        newest is, with fallback=False).
    """
    steps = self.steps
    if not steps:
      return None
    errors = []
    for step in reversed(steps):
      try:
        state, meta = self.restore(target, step)
        return state, meta, step
      except CorruptCheckpointError as e:
        if not fallback:
          raise
        errors.append(_one_line(e))
        warnings.warn(f"{_one_line(e)}; trying the previous checkpoint",
                      RuntimeWarning, stacklevel=2)
    raise CorruptCheckpointError(
        f"every checkpoint in {self.directory} is unreadable (steps "
        f"{', '.join(str(s) for s in steps)}; newest: {errors[0]}); delete "
        f"{self.directory} to start over")

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
