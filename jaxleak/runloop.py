"""One resumable run loop for every long jaxleak job.

Training a classifier (`jaxleak.training`), DP training
(`jaxleak.dp_training`), training a diffusion prior
(`jaxleak.diffusion.training`) and recording an unlearning history
(`jaxleak.unlearning.history`) all run the same loop:

  run identity -> restore from the checkpointer -> step with a progress bar
  -> save on schedule and on interrupt -> total wall time, metrics, report.

`RunLoop` is that loop; each job keeps only its step function and its own
metrics. A step function is ``step_fn(step, state, aux) -> (state, aux,
postfix)``: it runs step number ``step`` (0-based), ``state`` is a pytree of
arrays (checkpointed with orbax), ``aux`` a JSON dict (history, running sums,
privacy ledger, ...) checkpointed next to it, ``postfix`` what the progress
bar shows.

Guarantees:
  * Resuming is exact: a run restored from step s continues with the state and
    aux saved at step s, so a job whose step is a pure function of (seed, step,
    state) ends bit-identical to an uninterrupted run.
  * A workdir holding a different run (another model, data or configuration)
    is refused with `DifferentRunError` before any array is read; the stored
    identity is compared first, so a different model is never mistaken for a
    corrupt checkpoint.
  * A corrupt newest checkpoint is skipped with one line on stderr naming the
    step; when every checkpoint is corrupt, `CorruptCheckpointError` names the
    steps and what to do.
  * SIGINT (Ctrl-C) finishes the running step, saves a checkpoint at that
    step and raises `Interrupted`; a second SIGINT interrupts at once.
  * A checkpoint that cannot be written raises `CheckpointError` saying which
    step failed and which good checkpoint is kept.
  * ``wall_time_s`` is the total over every segment of a resumed run; a
    finished run that is rerun adds nothing to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import contextvars
import dataclasses
import json
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Self

from jaxleak import checkpoint as checkpoint_lib
from jaxleak import report

__all__ = (
    "DifferentRunError",
    "Interrupted",
    "LoopResult",
    "Preempted",
    "RunLoop",
    "canonical_json",
    "describe_workdir",
    "prepare_workdir",
    "workdir_guard",
)

StepFn = Callable[[int, Any, dict], tuple[Any, dict, dict]]


PROGRESS_INTERVAL_S = 1.0
"""Seconds between redraws of the progress bar."""


class Preempted(RuntimeError):
  """A run stopped on purpose (``stop_after``) after checkpointing; rerun it."""


class Interrupted(KeyboardInterrupt):
  """SIGINT stopped a run after checkpointing the step it interrupted."""


class DifferentRunError(ValueError):
  """The checkpoint directory holds a run with another identity."""


@dataclasses.dataclass(frozen=True)
class LoopResult:
  """What `RunLoop.run` returns.

  Attributes:
    state: the final state pytree.
    aux: the final JSON aux dict.
    step: steps done (== total_steps for a finished run).
    resumed_from: the checkpoint step the run resumed from, or None.
    wall_time_s: wall time summed over this segment and every segment it
      resumed from.
    segment_wall_time_s: wall time of the steps run in this call.
  """
  state: Any
  aux: dict
  step: int
  resumed_from: int | None
  wall_time_s: float
  segment_wall_time_s: float


def canonical_json(obj: Any) -> Any:
  """`obj` normalised through JSON, so stored and fresh identities compare."""
  return json.loads(json.dumps(report.to_jsonable(obj)))


def _differences(stored: Any, requested: Any, prefix: str = "") -> list[str]:
  """Dotted paths where two JSON values differ (the keys a user changed)."""
  if isinstance(stored, dict) and isinstance(requested, dict):
    out = []
    for k in sorted(set(stored) | set(requested), key=str):
      out += _differences(stored.get(k), requested.get(k), f"{prefix}{k}.")
    return out
  return [] if stored == requested else [prefix.rstrip(".") or "identity"]


def _first_line(e: BaseException, limit: int = 300) -> str:
  text = str(e).strip().splitlines()
  return (text[0] if text else type(e).__name__)[:limit]


# -- workdir -------------------------------------------------------------------


def prepare_workdir(workdir: str | os.PathLike, *, flag: str = "--workdir"
                    ) -> bool:
  """Creates `workdir` if needed and checks that files can be written in it.

  Runs before any data loads, so an unusable folder costs nothing.

  Args:
    workdir: the output folder.
    flag: how the caller names the folder in messages (a CLI flag or
      ``"argument 'workdir'"``).

  Returns:
    True if this call created the folder (see `workdir_guard`).

  Raises:
    ValueError: the folder (or one of its parents) is a file, cannot be
      created, or is not writable.
  """
  path = os.path.abspath(os.fspath(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{flag} {os.fspath(workdir)!r} is a file, not a folder")
  ancestor = path
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise ValueError(f"{flag} {os.fspath(workdir)!r} cannot be created: "
                     f"{ancestor} is a file, not a folder")
  created = not os.path.isdir(path)
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".jaxleak-write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"{flag} {os.fspath(workdir)!r} is not writable: "
                     f"{e.strerror or e}") from None
  return created


# (flag, folder as given, absolute folder) of the innermost `workdir_guard`:
# how the command line names the folder a run loop works in.
_GUARDED: contextvars.ContextVar[tuple[str, str, str] | None] = (
    contextvars.ContextVar("jaxleak_guarded_workdir", default=None))


def describe_workdir(path: str | os.PathLike) -> str:
  """How messages name the run folder `path`.

  Inside `workdir_guard` (a CLI command), by the flag the user typed:
  ``--workdir 'runs/x'`` (plus the sub-folder when `path` lies below it);
  otherwise by the library argument: ``argument 'workdir'='runs/x'``.
  """
  guarded = _GUARDED.get()
  if guarded is not None:
    flag, given, absolute = guarded
    rel = os.path.relpath(os.path.abspath(os.fspath(path)), absolute)
    if rel == ".":
      return f"{flag} {given!r}"
    if not rel.startswith(os.pardir):
      return f"{flag} {given!r} (its {rel}/ folder)"
  return f"argument 'workdir'={os.fspath(path)!r}"


def _holds_files(path: str) -> bool:
  return any(files for _, _, files in os.walk(path))


@contextlib.contextmanager
def workdir_guard(workdir: str | os.PathLike, *, flag: str = "--workdir"
                  ) -> Iterator[str]:
  """`prepare_workdir`, and removes the folder again if the run fails empty.

  A run that fails (bad input, interrupted before its first checkpoint) must
  not leave an empty folder behind that the next run would trip over. The
  folder is removed only if this guard created it and no file was written in
  it.

  Inside the guard, messages about the folder (a different run, see
  `describe_workdir`) name it by `flag`.
  """
  created = prepare_workdir(workdir, flag=flag)
  path = os.fspath(workdir)
  token = _GUARDED.set((flag, path, os.path.abspath(path)))
  try:
    yield path
  except BaseException:
    if created and os.path.isdir(path) and not _holds_files(path):
      shutil.rmtree(path, ignore_errors=True)
    raise
  finally:
    _GUARDED.reset(token)


# -- the loop ------------------------------------------------------------------


class RunLoop:
  """Restores, steps, saves and times one resumable run.

  Example::

    loop = RunLoop("train", total_steps, checkpoint_dir=f"{workdir}/checkpoints",
                   identity={"config": ..., "model": ...}, checkpoint_every=200)
    state, aux = loop.restore(state, {"history": []})
    result = loop.run(step_fn, state, aux)

  Args:
    name: shown on the progress bar and in messages.
    total_steps: steps of the whole run.
    checkpoint_dir: folder of the `Checkpointer`; None disables checkpoints
      (and resuming).
    identity: JSON describing the run (model, data, configuration); a
      checkpoint with another identity is refused.
    checkpoint_every: save every this many steps (the last step is always
      saved); None saves only at `save_when` steps and the end.
    save_when: extra save points, ``save_when(steps_done) -> bool`` (e.g.
      epoch ends).
    stop_after: raise `Preempted` once this many steps are done and saved
      (simulates a preemption).
    progress: show a tqdm progress bar.
    unit: progress-bar unit ("step", "epoch").
    max_to_keep: checkpoints kept on disk (>= 2).
    where: how messages name the run's folder (default:
      `describe_workdir` of the parent of checkpoint_dir: the CLI flag inside
      `workdir_guard`, else "argument 'workdir'=<folder>").
  """

  def __init__(self, name: str, total_steps: int, *,
               checkpoint_dir: str | os.PathLike | None = None,
               identity: Any = None, checkpoint_every: int | None = None,
               save_when: Callable[[int], bool] | None = None,
               stop_after: int | None = None, progress: bool = True,
               unit: str = "step", max_to_keep: int = 3,
               where: str | None = None):
    self.name = name
    self.total_steps = int(total_steps)
    self.identity = canonical_json(identity)
    self.checkpoint_every = checkpoint_every
    self.save_when = save_when
    self.stop_after = stop_after
    self.progress = progress
    self.unit = unit
    self.where = where
    self.step = 0
    self.resumed_from: int | None = None
    self.last_saved: int | None = None
    self.state: Any = None
    self.aux: dict = {}
    self.last_result: LoopResult | None = None
    self._prior_wall = 0.0
    self._saved_wall: float | None = None  # wall time in the newest save
    self._t0: float | None = None
    self._interrupted = False
    self.ckpt = None
    if checkpoint_dir is not None:
      self.ckpt = checkpoint_lib.Checkpointer(checkpoint_dir,
                                              max_to_keep=max_to_keep)

  @property
  def directory(self) -> str | None:
    return None if self.ckpt is None else self.ckpt.directory

  @property
  def wall_time_s(self) -> float:
    """Wall time of the run so far, over every segment."""
    if self._t0 is None:
      return self._prior_wall
    return self._prior_wall + time.perf_counter() - self._t0

  # -- restore -----------------------------------------------------------------
  def restore(self, state: Any, aux: dict | None = None) -> tuple[Any, dict]:
    """The newest good checkpoint's `(state, aux)`, or the given ones.

    Args:
      state: the fresh state; gives the structure, shapes and dtypes to
        restore into.
      aux: the fresh aux dict.

    Raises:
      DifferentRunError: the newest readable checkpoint has another identity.
      CorruptCheckpointError: every checkpoint present is unreadable.
    """
    self.state, self.aux = state, dict(aux or {})
    if self.ckpt is None:
      return self.state, self.aux
    steps = self.ckpt.steps
    corrupt: list[tuple[int, str]] = []
    for step in reversed(steps):
      try:
        meta = self.ckpt.restore_metadata(step)
      except checkpoint_lib.CorruptCheckpointError as e:
        corrupt.append((step, _first_line(e)))
        continue
      self._check_identity(meta)
      try:
        restored, meta = self.ckpt.restore(state, step)
      except checkpoint_lib.CorruptCheckpointError as e:
        corrupt.append((step, _first_line(e)))
        continue
      if corrupt:
        print(f"{self.name}: skipped the unreadable checkpoint(s) "
              f"{', '.join(str(s) for s, _ in corrupt)} in {self.directory} "
              f"(truncated or damaged); resuming from step {step}",
              file=sys.stderr)
      elif int(meta["step"]) < self.total_steps:
        # Said when it happens, not only in the final summary: a resumed run
        # that is interrupted again shows that it did pick up.
        print(f"{self.name}: resuming from checkpoint step {meta['step']} of "
              f"{self.total_steps} in {self.directory}", file=sys.stderr,
              flush=True)
      self.state, self.aux = restored, dict(meta.get("aux", {}))
      self.step = self.resumed_from = self.last_saved = int(meta["step"])
      self._prior_wall = float(meta.get("wall_time_s", 0.0))
      return self.state, self.aux
    if corrupt:
      raise checkpoint_lib.CorruptCheckpointError(
          f"{self.name}: every checkpoint in {self.directory} is unreadable "
          f"(steps {', '.join(str(s) for s, _ in sorted(corrupt))}; newest: "
          f"{corrupt[0][1]}); delete {self.directory} to start this run over")
    return self.state, self.aux

  def _check_identity(self, meta: dict) -> None:
    stored = meta.get("identity")
    if stored == self.identity:
      return
    diff = (_differences(stored, self.identity) if stored is not None
            else ["no jaxleak run identity stored"])
    shown = ", ".join(diff[:6]) + (", ..." if len(diff) > 6 else "")
    where = self.where or describe_workdir(os.path.dirname(self.directory))
    raise DifferentRunError(
        f"{self.name}: {where} holds a different run (differs in: {shown}); "
        "use a new workdir, or delete this one to start over")

  # -- save --------------------------------------------------------------------
  def save(self) -> None:
    """Checkpoints the current state and aux at the current step."""
    if self.ckpt is None or self.last_saved == self.step:
      return
    meta = {"step": self.step, "identity": self.identity,
            "wall_time_s": self.wall_time_s, "aux": canonical_json(self.aux)}
    self._saved_wall = None
    try:
      self.ckpt.save(self.step, self.state, meta)
    except checkpoint_lib.CheckpointError as e:
      kept = (f"the last good checkpoint, step {self.last_saved}, is kept"
              if self.last_saved is not None else "no earlier checkpoint exists")
      raise checkpoint_lib.CheckpointError(
          f"{self.name}: could not write checkpoint step {self.step} to "
          f"{self.directory} ({_first_line(e.__cause__ or e, 200)}); {kept}; "
          "free disk space or fix permissions and rerun to resume") from e
    self.last_saved = self.step
    self._saved_wall = meta["wall_time_s"]

  def _due(self, done: int) -> bool:
    return (done == self.total_steps
            or (self.checkpoint_every and done % self.checkpoint_every == 0)
            or (self.save_when is not None and self.save_when(done)))

  # -- run ---------------------------------------------------------------------
  def run(self, step_fn: StepFn, state: Any = None, aux: dict | None = None
          ) -> LoopResult:
    """Steps from the restored step to `total_steps`, saving as it goes.

    Args:
      step_fn: ``step_fn(step, state, aux) -> (state, aux, postfix)``.
      state: the state to start from (default: what `restore` returned).
      aux: the aux dict to start from (default: what `restore` returned).

    Raises:
      Preempted: `stop_after` steps are done (and saved).
      Interrupted: SIGINT arrived; the interrupted step was saved.
      CheckpointError: a checkpoint could not be written.
    """
    if state is not None:
      self.state = state
    if aux is not None:
      self.aux = aux
    start = self.step
    bar = None
    if self.progress and start < self.total_steps:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      # Redrawn at most once a second (and never by set_postfix below): in a
      # log file each redraw is a line, so not one per step. The rate
      # (steps/s) is part of every redraw.
      bar = tqdm(total=self.total_steps, initial=start, desc=self.name,
                 unit=self.unit, dynamic_ncols=True,
                 mininterval=PROGRESS_INTERVAL_S)
    self._t0 = time.perf_counter()
    try:
      with self._deferred_sigint():
        while self.step < self.total_steps:
          self.state, self.aux, postfix = step_fn(self.step, self.state,
                                                  self.aux)
          self.step += 1
          if self._due(self.step):
            self.save()
          if bar is not None:
            bar.update(1)
            if postfix:
              bar.set_postfix(postfix, refresh=False)
          if self._interrupted:
            self.save()
            where = (f"; saved checkpoint step {self.step} in {self.directory}"
                     if self.ckpt is not None else "")
            raise Interrupted(f"{self.name}: interrupted at step {self.step}"
                              f"{where}; rerun the same command to resume")
          if (self.stop_after is not None and self.step >= self.stop_after
              and self.step < self.total_steps):
            self.save()
            raise Preempted(f"stopped after step {self.step} (stop_after)")
    finally:
      if bar is not None:
        bar.close()
      # A rerun of a finished run (no step) adds nothing to the total.
      segment = time.perf_counter() - self._t0 if self.step > start else 0.0
      if self.step == self.total_steps and self._saved_wall is not None:
        # A finished run's total is the one its final checkpoint records, so
        # that a rerun reports the same figure.
        segment = self._saved_wall - self._prior_wall
      self._prior_wall += segment
      self._t0 = None
      # Also set when Preempted/Interrupted propagate, for callers that
      # turn a stop into a return value.
      self.last_result = LoopResult(
          state=self.state, aux=self.aux, step=self.step,
          resumed_from=self.resumed_from, wall_time_s=self._prior_wall,
          segment_wall_time_s=segment)
    return self.last_result

  @contextlib.contextmanager
  def _deferred_sigint(self) -> Iterator[None]:
    """Turns the first SIGINT into a flag the loop checks after each step."""
    self._interrupted = False
    if threading.current_thread() is not threading.main_thread():
      yield
      return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
      del signum, frame
      self._interrupted = True
      # A second Ctrl-C interrupts at once (e.g. a step that hangs).
      signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, on_sigint)
    try:
      yield
    finally:
      signal.signal(signal.SIGINT, previous)

  def close(self) -> None:
    if self.ckpt is not None:
      self.ckpt.close()

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
