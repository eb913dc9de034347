"""Host-side, stateless batching: epochs, Poisson sampling and user splits.

Every function here is a pure function of its arguments: the example order
of an epoch depends only on (seed, epoch) and a Poisson batch only on
(seed, step). A training loop that restarts from a checkpoint therefore
reproduces exactly the batches it would have seen, given the saved seed and
epoch/step, with no iterator state to save.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal
import warnings

import numpy as np

from jaxleak._src import validate
from jaxleak.data.dataset import as_arrays
from jaxleak.data.dataset import Dataset

# ----------------------------------------------------------------------------
# Epoch batching.


def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
  """Returns how many batches one epoch over `n` examples yields.

  Args:
    n: number of examples (>= 0).
    batch_size: examples per batch (>= 1).
    drop_remainder: if True, a final partial batch is dropped (floor
      division); otherwise it is kept (ceiling division).

  Returns:
    The number of batches.

  Raises:
    ValueError, TypeError: if `n` or `batch_size` is not a valid integer.
  """
  n = validate.check_int(n, "n", fn="num_batches", low=0)
  batch_size = validate.check_int(batch_size, "batch_size", fn="num_batches",
                                 low=1)
  return n // batch_size if drop_remainder else -(-n // batch_size)


def epoch_permutation(n: int, *, seed: int, epoch: int = 0) -> np.ndarray:
  """Returns the example order of one epoch: a permutation of range(n).

  Args:
    n: number of examples.
    seed: non-negative integer seed of the run.
    epoch: non-negative epoch index.

  Returns:
    int64 array [n], a function of (n, seed, epoch) only.
  """
  n = validate.check_int(n, "n", fn="epoch_permutation", low=0)
  seed = validate.check_int(seed, "seed", fn="epoch_permutation", low=0)
  epoch = validate.check_int(epoch, "epoch", fn="epoch_permutation", low=0)
  return np.random.default_rng([seed, epoch]).permutation(n)


def batches(dataset_or_arrays: Dataset | Sequence[np.ndarray],
            batch_size: int, *,
            seed: int, epoch: int = 0, shuffle: bool = True,
            drop_remainder: bool = True, start_batch: int = 0
            ) -> Iterator[tuple[np.ndarray, ...]]:
  """Iterates over one epoch of `dataset_or_arrays` in batches.

  The order is `epoch_permutation(n, seed=seed, epoch=epoch)` (identity when
  `shuffle=False`), so each (seed, epoch) always gives the same batches and
  each epoch visits every example exactly once (except a dropped remainder).

  Args:
    dataset_or_arrays: a Dataset, or a tuple of arrays sharing the leading
      axis, e.g. `(images, labels)`.
    batch_size: examples per batch (>= 1).
    seed: non-negative integer seed of the run.
    epoch: non-negative epoch index; a different epoch gives a different
      order.
    shuffle: if False, examples come in dataset order.
    drop_remainder: if True every batch has exactly `batch_size` examples
      (fixed shapes, so a jitted step compiles once) and the last
      `n % batch_size` examples of the epoch's order are skipped; if False
      the last batch may be smaller.
    start_batch: skip this many batches, to resume within an epoch.

  Returns:
    An iterator of tuples `(images, labels)` for a Dataset (or one array per
    input array), each with leading axis `batch_size`.

  Raises:
    ValueError: if `batch_size` exceeds the number of examples while
      `drop_remainder` is True (the epoch would be empty), or for invalid
      integers.
    TypeError: if `data` is neither a Dataset nor a tuple of arrays.
  """
  fn = "batches"
  arrays = as_arrays(dataset_or_arrays, fn=fn, name="dataset_or_arrays")
  n = arrays[0].shape[0]
  batch_size = validate.check_int(batch_size, "batch_size", fn=fn, low=1)
  seed = validate.check_int(seed, "seed", fn=fn, low=0)
  epoch = validate.check_int(epoch, "epoch", fn=fn, low=0)
  start_batch = validate.check_int(start_batch, "start_batch", fn=fn, low=0)
  if drop_remainder and batch_size > n:
    raise ValueError(
        f"{fn}: argument 'batch_size' ({batch_size}) exceeds the number of "
        f"examples ({n}), so drop_remainder=True would yield no batches")
  order = (epoch_permutation(n, seed=seed, epoch=epoch) if shuffle
           else np.arange(n))
  total = num_batches(n, batch_size, drop_remainder)
  # Validation above runs eagerly; only the slicing is lazy.
  return _iter_batches(arrays, order, batch_size, start_batch, total)


def _iter_batches(arrays: tuple[np.ndarray, ...], order: np.ndarray,
                  batch_size: int, start: int, total: int
                  ) -> Iterator[tuple[np.ndarray, ...]]:
  for b in range(start, total):
    idx = order[b * batch_size:(b + 1) * batch_size]
    yield tuple(a[idx] for a in arrays)


# ----------------------------------------------------------------------------
# Poisson sampling for DP-SGD.

OnOverflow = Literal["raise", "truncate"]


def default_max_batch_size(n: int, sample_rate: float,
                           tail_prob: float = 1e-9) -> int:
  """Returns a padded batch size that a Poisson batch exceeds w.p. <= tail_prob.

  The size of a Poisson batch is K ~ Binomial(n, sample_rate); this returns the
  smallest m with P(K > m) <= tail_prob (scipy's binomial inverse survival
  function), capped at n. Over T steps the chance of any overflow is at most
  T * tail_prob (union bound), e.g. 1e-4 for 1e5 steps at the default.

  Args:
    n: dataset size (>= 1).
    sample_rate: inclusion probability q in (0, 1].
    tail_prob: allowed per-step overflow probability in (0, 1).

  Returns:
    The padded batch size m, with 1 <= m <= n.

  Raises:
    ValueError, TypeError: for out-of-range arguments.
  """
  fn = "default_max_batch_size"
  n = validate.check_int(n, "n", fn=fn, low=1)
  validate.check_in_range(sample_rate, "sample_rate", 0.0, 1.0, fn=fn,
                          inclusive=(False, True))
  validate.check_in_range(tail_prob, "tail_prob", 0.0, 1.0, fn=fn,
                          inclusive=(False, False))
  from scipy import stats  # pylint: disable=g-import-not-at-top

  m = stats.binom.isf(float(tail_prob), n, float(sample_rate))
  return int(min(n, max(1, m)))


def poisson_batch_indices(n: int, sample_rate: float, *, seed: int, step: int,
                          max_batch_size: int,
                          on_overflow: OnOverflow = "raise"
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Samples one Poisson batch and pads it to a fixed size.

  Each of the `n` examples is included independently with probability
  `sample_rate`, using `np.random.default_rng([seed, step])`, so the batch is
  a pure function of (n, sample_rate, seed, step). The sampled indices
  (ascending) are padded to `max_batch_size` with index 0 and mask False, so a
  jitted DP step sees fixed shapes; it must zero the padded examples'
  contributions with `mask` and normalise the noisy gradient sum by the
  *expected* batch size n * sample_rate, not by mask.sum().

  Args:
    n: dataset size (>= 1).
    sample_rate: inclusion probability q in (0, 1].
    seed: non-negative integer seed of the run.
    step: non-negative training step.
    max_batch_size: the padded size (>= 1); see `default_max_batch_size`.
    on_overflow: what to do if more than `max_batch_size` examples are
      sampled. "raise" (default) raises ValueError. "truncate" warns and keeps
      a uniformly random `max_batch_size` of them; this changes the sampling
      distribution, so the Poisson-subsampling DP guarantee no longer holds.

  Returns:
    `(indices, mask)`: int32 [max_batch_size] and bool [max_batch_size];
    `mask[i]` is True iff `indices[i]` is a sampled example.

  Raises:
    ValueError: on overflow with on_overflow="raise", or invalid arguments.
  """
  fn = "poisson_batch_indices"
  n = validate.check_int(n, "n", fn=fn, low=1)
  validate.check_in_range(sample_rate, "sample_rate", 0.0, 1.0, fn=fn,
                          inclusive=(False, True))
  seed = validate.check_int(seed, "seed", fn=fn, low=0)
  step = validate.check_int(step, "step", fn=fn, low=0)
  max_batch_size = validate.check_int(max_batch_size, "max_batch_size", fn=fn,
                                     low=1)
  validate.check_choice(on_overflow, "on_overflow", ("raise", "truncate"),
                        fn=fn)
  return _poisson(n, float(sample_rate), seed, step, max_batch_size,
                  on_overflow)


def _poisson(n: int, q: float, seed: int, step: int, max_batch_size: int,
             on_overflow: str) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng([seed, step])
  # One uniform per example: literally independent inclusion, O(n) per step.
  sampled = np.flatnonzero(rng.random(n) < q)
  k = sampled.size
  if k > max_batch_size:
    suggestion = default_max_batch_size(n, q)
    if on_overflow == "raise":
      raise ValueError(
          f"poisson_batch_indices: {k} examples were sampled at step {step} "
          f"but argument 'max_batch_size' is {max_batch_size}. Truncating "
          f"would break the DP guarantee; use a larger max_batch_size, e.g. "
          f"default_max_batch_size({n}, {q}) = {suggestion}")
    warnings.warn(
        f"poisson_batch_indices: {k} examples sampled at step {step} exceed "
        f"max_batch_size={max_batch_size}; keeping a random {max_batch_size}. "
        f"The Poisson-sampling DP guarantee does not hold for this step "
        f"(suggested max_batch_size: {suggestion}).", RuntimeWarning,
        stacklevel=3)
    # A random subset, not the first ones, so low indices are not favoured.
    sampled = np.sort(rng.choice(sampled, size=max_batch_size, replace=False))
    k = max_batch_size
  indices = np.zeros((max_batch_size,), np.int32)
  indices[:k] = sampled
  mask = np.zeros((max_batch_size,), bool)
  mask[:k] = True
  return indices, mask


class PoissonSampler:
  """Checkpointable Poisson batch sampler for DP-SGD.

  `batch(step)` is stateless; iterating (`next(sampler)`) returns
  `batch(sampler.step)` and advances `step`. The checkpointable state is just
  `{"seed", "step"}`; n, the rate and max_batch_size are configuration that
  the training config recreates.

  Example:
    sampler = PoissonSampler(60000, expected_batch_size=256, seed=0)
    idx, mask = next(sampler)
    ckpt = sampler.state_dict()          # {"seed": 0, "step": 1}
    resumed = PoissonSampler.from_state_dict(ckpt, 60000,
                                             expected_batch_size=256)
  """

  def __init__(self, n: int, *, sample_rate: float | None = None,
               expected_batch_size: float | None = None, seed: int,
               max_batch_size: int | None = None, tail_prob: float = 1e-9,
               on_overflow: OnOverflow = "raise", step: int = 0):
    """Creates a sampler.

    Args:
      n: dataset size (>= 1).
      sample_rate: inclusion probability q in (0, 1]. Give exactly one of
        sample_rate and expected_batch_size.
      expected_batch_size: n * q, in (0, n]; q = expected_batch_size / n.
      seed: non-negative integer seed.
      max_batch_size: padded batch size; defaults to
        `default_max_batch_size(n, q, tail_prob)`.
      tail_prob: per-step overflow probability for the default
        max_batch_size.
      on_overflow: "raise" or "truncate"; see `poisson_batch_indices`.
      step: the next step `next()` will sample.

    Raises:
      ValueError: if both or neither of sample_rate and expected_batch_size
        are given, or an argument is out of range.
    """
    fn = "PoissonSampler"
    self._n = validate.check_int(n, "n", fn=fn, low=1)
    if (sample_rate is None) == (expected_batch_size is None):
      raise ValueError(
          f"{fn}: give exactly one of argument 'sample_rate' or argument "
          f"'expected_batch_size', got {sample_rate!r} and "
          f"{expected_batch_size!r}")
    if expected_batch_size is not None:
      validate.check_in_range(expected_batch_size, "expected_batch_size", 0.0,
                              float(self._n), fn=fn, inclusive=(False, True))
      sample_rate = float(expected_batch_size) / self._n
    validate.check_in_range(sample_rate, "sample_rate", 0.0, 1.0, fn=fn,
                            inclusive=(False, True))
    self._q = float(sample_rate)
    self._seed = validate.check_int(seed, "seed", fn=fn, low=0)
    self.step = validate.check_int(step, "step", fn=fn, low=0)
    validate.check_choice(on_overflow, "on_overflow", ("raise", "truncate"),
                          fn=fn)
    self._on_overflow = on_overflow
    if max_batch_size is None:
      max_batch_size = default_max_batch_size(self._n, self._q, tail_prob)
    self._max_batch_size = validate.check_int(max_batch_size, "max_batch_size",
                                             fn=fn, low=1)

  @property
  def n(self) -> int:
    return self._n

  @property
  def sample_rate(self) -> float:
    return self._q

  @property
  def expected_batch_size(self) -> float:
    """n * sample_rate: the DP-SGD normaliser of the noisy gradient sum."""
    return self._n * self._q

  @property
  def seed(self) -> int:
    return self._seed

  @property
  def max_batch_size(self) -> int:
    return self._max_batch_size

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(indices, mask)` for `step`; does not change `self.step`."""
    step = validate.check_int(step, "step", fn="PoissonSampler.batch", low=0)
    return _poisson(self._n, self._q, self._seed, step, self._max_batch_size,
                    self._on_overflow)

  def __iter__(self) -> PoissonSampler:
    return self

  def __next__(self) -> tuple[np.ndarray, np.ndarray]:
    out = self.batch(self.step)
    self.step += 1
    return out

  def state_dict(self) -> dict[str, int]:
    """Returns the checkpointable state `{"seed": int, "step": int}`."""
    return {"seed": self._seed, "step": self.step}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    """Restores `seed` and `step` from `state_dict()` output.

    Raises:
      ValueError: if `state` lacks "seed" or "step" or they are invalid.
    """
    fn = "PoissonSampler.load_state_dict"
    if not isinstance(state, dict) or set(state) != {"seed", "step"}:
      raise ValueError(
          f"{fn}: argument 'state' must be a dict with keys 'seed' and "
          f"'step', got {state!r}")
    # Checkpoint formats may hand back NumPy scalars or 0-d arrays.
    seed = validate.check_int(np.asarray(state["seed"]).item(), "state['seed']",
                             fn=fn, low=0)
    step = validate.check_int(np.asarray(state["step"]).item(), "state['step']",
                             fn=fn, low=0)
    self._seed, self.step = seed, step

  @classmethod
  def from_state_dict(cls, state: dict[str, Any], n: int,
                      **config: Any) -> PoissonSampler:
    """Creates a sampler with `config` and restores `state` into it.

    Args:
      state: output of `state_dict()`.
      n: dataset size.
      **config: the other constructor arguments (sample_rate or
        expected_batch_size, max_batch_size, ...), but not seed or step.

    Returns:
      A sampler whose next batch is the one after the checkpoint.
    """
    sampler = cls(n, seed=0, **config)
    sampler.load_state_dict(state)
    return sampler

  def __repr__(self) -> str:
    return (f"PoissonSampler(n={self._n}, sample_rate={self._q}, "
            f"seed={self._seed}, step={self.step}, "
            f"max_batch_size={self._max_batch_size})")


# ----------------------------------------------------------------------------
# User-level partitions.


USER_MODES = ("label", "dominant", "random")


def partition_users(dataset: Dataset, users: int,
                    mode: Literal["label", "dominant", "random"] = "label", *,
                    batch_size: int | None = None, share: float = 0.7,
                    seed: int = 0) -> list[Dataset]:
  """Splits a dataset into `users` disjoint per-user datasets.

  Without `batch_size` every example goes to exactly one user and users get
  equal sizes (they differ by at most one example: `np.array_split`):

  * mode="random": a seeded random permutation of the examples is cut into
    `users` consecutive chunks (IID users).
  * mode="label" (non-IID): examples are ordered by label, classes in
    ascending order, with the order *within* each class shuffled by `seed`;
    that sequence is cut into `users` contiguous chunks. Each user thus
    holds a contiguous range of classes: with C classes of equal size and
    users <= C, about C / users classes (at most ceil(C / users) + 1 when a
    chunk boundary falls inside a class); with users > C, several users
    share a class and each holds one or two classes.

  With `batch_size` = B every user gets exactly B examples, drawn without
  replacement (users stay disjoint; the rest of the dataset is left out).
  This is the user-level inversion setting, where a user's batch shares a
  private attribute (Li et al., "Exploring User-level Gradient Inversion
  with a Diffusion Prior", arXiv 2409.07291):

  * mode="label": all B examples of user i share one class, the i-th class
    in a round robin over the sorted classes (user 0 class 0, user 1 class 1,
    ..., user C class 0 again).
  * mode="dominant": user i's round-robin class holds ``round(share * B)``
    of its batch (at least 1) and the other examples are drawn uniformly
    from the other classes, so the attribute is a distribution, not a
    constant. The dominant share is honoured exactly.
  * mode="random": B examples drawn uniformly (IID users).

  Within each user, examples keep their dataset order.

  Args:
    dataset: the Dataset to partition.
    users: number of users, in [1, len(dataset)].
    mode: "label", "dominant" or "random" ("dominant" needs `batch_size`).
    batch_size: examples per user, or None to split the whole dataset.
    share: the dominant class's share of a batch, in (0, 1] (mode
      "dominant" only).
    seed: non-negative integer seed.

  Returns:
    A list of `users` Datasets named "<name>/user<i>".

  Raises:
    ValueError: if `users` is outside [1, len(dataset)], `mode` is invalid,
      `share` lies outside (0, 1], ``users * batch_size`` exceeds the
      dataset, or a class has fewer examples than its users need (a batch
      larger than a class).
    TypeError: if `dataset` is not a Dataset or a count is not an integer.
  """
  fn = "partition_users"
  if not isinstance(dataset, Dataset):
    raise TypeError(
        f"{fn}: argument 'dataset' must be a jaxleak.data.Dataset, got "
        f"{type(dataset).__name__}")
  n = len(dataset)
  users = validate.check_int(users, "users", fn=fn, low=1, high=n)
  validate.check_choice(mode, "mode", USER_MODES, fn=fn)
  seed = validate.check_int(seed, "seed", fn=fn, low=0)
  validate.check_in_range(share, "share", 0.0, 1.0, fn=fn,
                          inclusive=(False, True))
  if batch_size is None and mode == "dominant":
    raise ValueError(f"{fn}: argument 'batch_size' is required with "
                     "mode='dominant'")
  rng = np.random.default_rng(seed)
  if batch_size is None:
    perm = rng.permutation(n)
    if mode == "label":
      # A stable sort keeps the random within-class order of `perm`.
      perm = perm[np.argsort(dataset.labels[perm], kind="stable")]
    chunks = np.array_split(perm, users)
  else:
    batch_size = validate.check_int(batch_size, "batch_size", fn=fn, low=1)
    if users * batch_size > n:
      raise ValueError(
          f"{fn}: argument 'users' ({users}) x argument 'batch_size' "
          f"({batch_size}) need {users * batch_size} examples, more than the "
          f"{n} in "
          f"{dataset.name!r}; use fewer users or a smaller batch_size")
    chunks = _fixed_size_users(dataset.labels, users, batch_size, mode,
                               share, rng, fn)
  out = []
  for i, chunk in enumerate(chunks):
    user = dataset.subset(np.sort(chunk))
    out.append(Dataset(images=user.images, labels=user.labels,
                       class_names=user.class_names,
                       name=f"{dataset.name}/user{i}"))
  return out


def _fixed_size_users(labels: np.ndarray, users: int, batch_size: int,
                      mode: str, share: float, rng: np.random.Generator,
                      fn: str) -> list[np.ndarray]:
  """Index arrays of `users` disjoint batches of `batch_size` (see above)."""
  labels = np.asarray(labels)
  if mode == "random":
    perm = rng.permutation(labels.size)
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(users)]
  classes = np.unique(labels)
  # Each class's examples in a seeded random order, consumed front to back.
  pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c)))
           for c in classes}
  major = [int(classes[i % classes.size]) for i in range(users)]
  n_major = batch_size if mode == "label" else max(
      1, round(share * batch_size))
  for c in set(major):
    need = n_major * major.count(c)
    if need > len(pools[c]):
      each = "" if mode == "label" else f", round(share * batch_size) = {n_major} each"
      raise ValueError(
          f"{fn}: argument 'batch_size' ({batch_size}) is larger than a "
          f"class allows: {major.count(c)} user(s) of class {c} need {need} "
          f"of its {len(pools[c])} examples{each}; use fewer users or a "
          "smaller batch_size")
  chunks = [[pools[c].pop() for _ in range(n_major)] for c in major]
  if mode == "dominant" and n_major < batch_size:
    for i, c in enumerate(major):
      rest = np.asarray([j for d, pool in pools.items() if d != c
                         for j in pool], np.int64)
      need = batch_size - n_major
      if rest.size < need:
        raise ValueError(
            f"{fn}: argument 'batch_size' ({batch_size}) is too large: user "
            f"{i} needs {need} examples outside class {c}, {rest.size} left")
      picked = set(rng.choice(rest, need, replace=False).tolist())
      pools = {d: (pool if d == c else [j for j in pool if j not in picked])
               for d, pool in pools.items()}
      chunks[i].extend(sorted(picked))
  return [np.asarray(ch, np.int64) for ch in chunks]
