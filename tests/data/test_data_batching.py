"""Tests for jaxleak.data batching, Poisson sampling and user partitions."""

import math

import numpy as np
import pytest
from scipy import stats

from jaxleak import data


def _indexed_dataset(n, num_classes=10):
  """A Dataset whose pixel [i, 0, 0, 0] encodes i exactly (i / 4096)."""
  assert n <= 4096
  images = np.zeros((n, 2, 2, 1), np.float32)
  images[:, 0, 0, 0] = np.arange(n) / 4096.0
  labels = np.sort(np.arange(n) % num_classes)  # class blocks, like sorted data
  return data.Dataset(images=images, labels=labels,
                      class_names=tuple(str(c) for c in range(num_classes)),
                      name="indexed")


def _ids(images):
  return np.rint(images[:, 0, 0, 0] * 4096).astype(int)


# ----------------------------------------------------------------------------
# Epoch batching.


@pytest.mark.parametrize("n, bs, drop, expected", [
    (100, 10, True, 10), (103, 10, True, 10), (103, 10, False, 11),
    (9, 10, True, 0), (9, 10, False, 1), (0, 4, False, 0),
])
def test_num_batches(n, bs, drop, expected):
  assert data.num_batches(n, bs, drop) == expected


def test_num_batches_errors():
  with pytest.raises(ValueError, match="'batch_size' must be a positive int"):
    data.num_batches(10, 0)
  with pytest.raises(TypeError, match="'batch_size' must be a positive int"):
    data.num_batches(10, 2.0)
  with pytest.raises(ValueError, match="'n' must be an int >= 0"):
    data.num_batches(-1, 2)


def test_batches_fixed_size_cover_epoch_once():
  ds = _indexed_dataset(103)
  out = list(data.batches(ds, 10, seed=3, epoch=0))
  assert len(out) == 10
  for images, labels in out:
    assert images.shape == (10, 2, 2, 1) and labels.shape == (10,)
    # Images and labels stay aligned.
    np.testing.assert_array_equal(labels, ds.labels[_ids(images)])
  seen = np.concatenate([_ids(im) for im, _ in out])
  assert len(set(seen.tolist())) == 100  # no repeats; 3 dropped
  order = data.epoch_permutation(103, seed=3, epoch=0)
  np.testing.assert_array_equal(seen, order[:100])
  np.testing.assert_array_equal(
      order, np.random.default_rng([3, 0]).permutation(103))


def test_batches_keep_remainder():
  ds = _indexed_dataset(103)
  out = list(data.batches(ds, 10, seed=0, drop_remainder=False))
  assert [len(lb) for _, lb in out] == [10] * 10 + [3]
  seen = np.concatenate([_ids(im) for im, _ in out])
  assert sorted(seen.tolist()) == list(range(103))


def test_batches_deterministic_per_seed_and_epoch():
  ds = _indexed_dataset(64)

  def order(seed, epoch):
    return np.concatenate(
        [_ids(im) for im, _ in data.batches(ds, 8, seed=seed, epoch=epoch)])

  np.testing.assert_array_equal(order(1, 5), order(1, 5))
  assert not np.array_equal(order(1, 5), order(1, 6))
  assert not np.array_equal(order(1, 5), order(2, 5))
  assert sorted(order(1, 6).tolist()) == list(range(64))


def test_batches_resume_and_no_shuffle():
  ds = _indexed_dataset(50)
  full = list(data.batches(ds, 5, seed=9, epoch=2))
  resumed = list(data.batches(ds, 5, seed=9, epoch=2, start_batch=7))
  assert len(resumed) == 3
  for (a, _), (b, _) in zip(full[7:], resumed):
    np.testing.assert_array_equal(a, b)
  plain = list(data.batches(ds, 5, seed=9, shuffle=False))
  np.testing.assert_array_equal(_ids(plain[1][0]), [5, 6, 7, 8, 9])


def test_batches_on_tuple_of_arrays():
  x = np.arange(20, dtype=np.float32)[:, None]
  y = np.arange(20) * 2
  out = list(data.batches((x, y), 4, seed=0))
  assert len(out) == 5
  for bx, by in out:
    np.testing.assert_array_equal(by, bx[:, 0] * 2)


def test_batches_errors():
  ds = _indexed_dataset(10)
  with pytest.raises(ValueError, match="'batch_size' .* exceeds"):
    data.batches(ds, 11, seed=0)  # raises at call time, not on iteration
  with pytest.raises(ValueError, match="'seed' must be an int >= 0"):
    data.batches(ds, 2, seed=-1)
  with pytest.raises(ValueError, match="'dataset_or_arrays' arrays must share"):
    data.batches((np.zeros((3, 2)), np.zeros(4)), 2, seed=0)
  with pytest.raises(TypeError, match="'dataset_or_arrays' must be a Dataset"):
    data.batches(np.zeros((3, 2)), 2, seed=0)


# ----------------------------------------------------------------------------
# Poisson sampling.


def test_poisson_matches_independent_inclusion():
  n, q = 500, 0.1
  for step in range(5):
    idx, mask = data.poisson_batch_indices(n, q, seed=7, step=step,
                                           max_batch_size=120)
    assert idx.shape == mask.shape == (120,)
    assert idx.dtype == np.int32 and mask.dtype == bool
    expected = np.flatnonzero(np.random.default_rng([7, step]).random(n) < q)
    k = int(mask.sum())
    assert k == expected.size
    np.testing.assert_array_equal(idx[mask], expected)
    assert mask[:k].all() and not mask[k:].any()  # sampled first, then pad
    assert not idx[~mask].any()  # padding uses index 0


def test_poisson_deterministic_per_seed_and_step():
  a = data.poisson_batch_indices(1000, 0.05, seed=1, step=3, max_batch_size=100)
  b = data.poisson_batch_indices(1000, 0.05, seed=1, step=3, max_batch_size=100)
  c = data.poisson_batch_indices(1000, 0.05, seed=1, step=4, max_batch_size=100)
  d = data.poisson_batch_indices(1000, 0.05, seed=2, step=3, max_batch_size=100)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])
  assert not np.array_equal(a[0], d[0])


def test_poisson_batch_size_statistics():
  # K ~ Binomial(n, q): mean nq = 50, variance nq(1-q) = 47.5. Over T = 400
  # steps the sample mean has sd sqrt(47.5 / 400) = 0.34 and the sample
  # variance sd ~ 47.5 * sqrt(2 / 399) = 3.4; the 5-sd tolerances below fail
  # for a correct sampler with probability < 1e-6 whatever the seed, while a
  # fixed-size sampler (variance 0) or a wrong rate would fail them.
  n, q, steps = 1000, 0.05, 400
  sizes = np.array([
      data.poisson_batch_indices(n, q, seed=0, step=s,
                                 max_batch_size=120)[1].sum()
      for s in range(steps)])
  assert abs(sizes.mean() - n * q) < 5 * math.sqrt(n * q * (1 - q) / steps)
  assert abs(sizes.var(ddof=1) - n * q * (1 - q)) < 5 * 47.5 * math.sqrt(
      2 / (steps - 1))
  # Every example is equally likely: counts per example ~ Binomial(400, q).
  counts = np.zeros(n)
  for s in range(steps):
    idx, mask = data.poisson_batch_indices(n, q, seed=0, step=s,
                                           max_batch_size=120)
    counts[idx[mask]] += 1
  first, second = counts[: n // 2].mean(), counts[n // 2:].mean()
  # Each half-mean has sd sqrt(400 * q * (1 - q) / 500) = 0.195.
  assert abs(first - steps * q) < 1.0 and abs(second - steps * q) < 1.0


def test_poisson_overflow_raises_with_suggestion():
  with pytest.raises(ValueError,
                     match=r"'max_batch_size' is 10.*default_max_batch_size"):
    data.poisson_batch_indices(100, 0.5, seed=0, step=0, max_batch_size=10)


def test_poisson_overflow_truncate_warns():
  full_idx, full_mask = data.poisson_batch_indices(
      100, 0.5, seed=0, step=0, max_batch_size=100)
  with pytest.warns(RuntimeWarning, match="DP guarantee does not hold"):
    idx, mask = data.poisson_batch_indices(
        100, 0.5, seed=0, step=0, max_batch_size=10, on_overflow="truncate")
  assert mask.all() and len(set(idx.tolist())) == 10
  assert set(idx.tolist()) <= set(full_idx[full_mask].tolist())


def test_poisson_argument_errors():
  kw = dict(seed=0, step=0, max_batch_size=4)
  with pytest.raises(ValueError, match="'sample_rate'"):
    data.poisson_batch_indices(10, 0.0, **kw)
  with pytest.raises(ValueError, match="'sample_rate'"):
    data.poisson_batch_indices(10, 1.5, **kw)
  with pytest.raises(ValueError, match="'step' must be an int >= 0"):
    data.poisson_batch_indices(10, 0.5, seed=0, step=-1, max_batch_size=4)
  with pytest.raises(ValueError, match="'on_overflow' must be one of"):
    data.poisson_batch_indices(10, 0.5, on_overflow="drop", **kw)


@pytest.mark.parametrize("n, q, tail", [
    (1000, 0.01, 1e-9), (60000, 256 / 60000, 1e-9), (50, 0.3, 1e-3),
])
def test_default_max_batch_size_is_binomial_quantile(n, q, tail):
  m = data.default_max_batch_size(n, q, tail)
  assert stats.binom.sf(m, n, q) <= tail < stats.binom.sf(m - 1, n, q)
  assert n * q < m <= n


def test_default_max_batch_size_edges():
  assert data.default_max_batch_size(100, 1.0) == 100
  assert data.default_max_batch_size(60000, 256 / 60000) == 357
  with pytest.raises(ValueError, match="'tail_prob'"):
    data.default_max_batch_size(100, 0.1, tail_prob=0.0)


def test_poisson_sampler_checkpoint_roundtrip():
  sampler = data.PoissonSampler(2000, expected_batch_size=64, seed=5)
  assert sampler.sample_rate == pytest.approx(0.032)
  assert sampler.expected_batch_size == pytest.approx(64.0)
  assert sampler.max_batch_size == data.default_max_batch_size(2000, 0.032)
  for _ in range(3):
    next(sampler)
  state = sampler.state_dict()
  assert state == {"seed": 5, "step": 3}
  expected = [next(sampler) for _ in range(2)]

  resumed = data.PoissonSampler.from_state_dict(
      {"seed": np.int64(5), "step": np.array(3)}, 2000, expected_batch_size=64)
  for idx, mask in expected:
    r_idx, r_mask = next(resumed)
    np.testing.assert_array_equal(r_idx, idx)
    np.testing.assert_array_equal(r_mask, mask)
  # batch(step) is stateless and equals the functional API.
  idx, mask = sampler.batch(3)
  f_idx, f_mask = data.poisson_batch_indices(
      2000, 0.032, seed=5, step=3, max_batch_size=sampler.max_batch_size)
  np.testing.assert_array_equal(idx, f_idx)
  np.testing.assert_array_equal(mask, f_mask)
  assert sampler.step == 5


def test_poisson_sampler_errors():
  with pytest.raises(ValueError, match="exactly one of argument 'sample_rate'"):
    data.PoissonSampler(100, seed=0)
  with pytest.raises(ValueError, match="exactly one of argument 'sample_rate'"):
    data.PoissonSampler(100, sample_rate=0.1, expected_batch_size=10, seed=0)
  with pytest.raises(ValueError, match="'expected_batch_size'"):
    data.PoissonSampler(100, expected_batch_size=200, seed=0)
  sampler = data.PoissonSampler(100, sample_rate=0.1, seed=0)
  with pytest.raises(ValueError, match="'state' must be a dict"):
    sampler.load_state_dict({"step": 1})


# ----------------------------------------------------------------------------
# User partitions.


def _check_partition(ds, users):
  ids = [_ids(u.images) for u in users]
  union = np.concatenate(ids)
  assert union.size == len(ds) and len(set(union.tolist())) == len(ds)
  sizes = [len(u) for u in users]
  assert max(sizes) - min(sizes) <= 1
  for u, i in zip(users, ids):
    np.testing.assert_array_equal(u.labels, ds.labels[i])  # still aligned
    assert u.class_names == ds.class_names
  return ids


def test_partition_by_label_five_users():
  ds = _indexed_dataset(4000)  # 400 per class, like mnist_subset train
  users = data.partition_users(ds, 5, mode="label", seed=0)
  _check_partition(ds, users)
  assert [u.name for u in users] == [f"indexed/user{i}" for i in range(5)]
  for i, u in enumerate(users):
    assert len(u) == 800
    assert sorted(set(u.labels.tolist())) == [2 * i, 2 * i + 1]


def test_partition_by_label_uneven_and_shared_classes():
  ds = _indexed_dataset(4000)
  users = data.partition_users(ds, 3, mode="label")
  _check_partition(ds, users)
  assert [len(set(u.labels.tolist())) for u in users] == [4, 4, 4]
  # More users than classes: users share classes, each holding one here.
  users = data.partition_users(ds, 20, mode="label", seed=1)
  _check_partition(ds, users)
  assert all(len(set(u.labels.tolist())) == 1 for u in users)
  assert [u.labels[0] for u in users] == [c for c in range(10) for _ in "ab"]


def test_partition_by_label_seed_changes_members_not_classes():
  ds = _indexed_dataset(4000)
  a = data.partition_users(ds, 20, mode="label", seed=0)
  b = data.partition_users(ds, 20, mode="label", seed=1)
  assert not np.array_equal(_ids(a[0].images), _ids(b[0].images))
  assert set(a[0].labels.tolist()) == set(b[0].labels.tolist())


def test_partition_random():
  ds = _indexed_dataset(4000)
  users = data.partition_users(ds, 7, mode="random", seed=3)
  ids = _check_partition(ds, users)
  assert all(len(set(u.labels.tolist())) == 10 for u in users)  # IID
  again = data.partition_users(ds, 7, mode="random", seed=3)
  for i, u in zip(ids, again):
    np.testing.assert_array_equal(i, _ids(u.images))
  assert all(np.all(np.diff(i) > 0) for i in ids)  # dataset order kept


def test_partition_errors():
  ds = _indexed_dataset(10)
  with pytest.raises(ValueError, match=r"'users' must be an int in \[1, 10\]"):
    data.partition_users(ds, 0)
  with pytest.raises(ValueError, match=r"'users' must be an int in \[1, 10\]"):
    data.partition_users(ds, 11)
  with pytest.raises(ValueError, match="'mode' must be one of"):
    data.partition_users(ds, 2, mode="size")
  with pytest.raises(TypeError, match="'dataset' must be a jaxleak.data"):
    data.partition_users((ds.images, ds.labels), 2)
  assert len(data.partition_users(ds, 10)) == 10


def _disjoint_fixed_size(users, b):
  ids = [_ids(u.images) for u in users]
  assert all(len(i) == b for i in ids)
  union = np.concatenate(ids)
  assert len(set(union.tolist())) == union.size  # no example in two users
  return ids


def test_partition_fixed_size_label_users():
  ds = _indexed_dataset(4000)  # 400 per class
  users = data.partition_users(ds, 20, mode="label", batch_size=100, seed=0)
  _disjoint_fixed_size(users, 100)
  # Round robin over classes; every image of a user has the user's class.
  assert [set(u.labels.tolist()) for u in users] == [
      {i % 10} for i in range(20)]
  for u in users:
    np.testing.assert_array_equal(u.labels, ds.labels[_ids(u.images)])


def test_partition_fixed_size_dominant_share_is_exact():
  ds = _indexed_dataset(4000)
  for share, b in ((0.7, 30), (0.5, 100), (1.0, 10)):
    users = data.partition_users(ds, 20, mode="dominant", batch_size=b,
                                 share=share, seed=2)
    _disjoint_fixed_size(users, b)
    for i, u in enumerate(users):
      counts = np.bincount(u.labels, minlength=10)
      assert counts[i % 10] == round(share * b)
      assert counts.sum() == b
  # At 0.7 the other 30% is spread over several classes, not one.
  users = data.partition_users(ds, 5, mode="dominant", batch_size=100)
  assert all(np.count_nonzero(np.bincount(u.labels, minlength=10)) >= 5
             for u in users)


def test_partition_fixed_size_random_users():
  ds = _indexed_dataset(4000)
  users = data.partition_users(ds, 8, mode="random", batch_size=50, seed=1)
  _disjoint_fixed_size(users, 50)
  assert np.mean([len(set(u.labels.tolist())) for u in users]) > 8


def test_partition_fixed_size_errors():
  ds = _indexed_dataset(100)  # 10 per class
  with pytest.raises(ValueError, match="'batch_size' is required"):
    data.partition_users(ds, 2, mode="dominant")
  with pytest.raises(ValueError, match=r"'share' must be in \(0.*1"):
    data.partition_users(ds, 2, mode="dominant", batch_size=5, share=0.0)
  with pytest.raises(ValueError, match=r"'share' must be in \(0.*1"):
    data.partition_users(ds, 2, mode="dominant", batch_size=5, share=1.5)
  with pytest.raises(ValueError, match="need 110 examples, more than the 100"):
    data.partition_users(ds, 11, mode="random", batch_size=10)
  # A batch larger than a class (10 examples each).
  with pytest.raises(ValueError, match="'batch_size' \\(11\\) is larger than "
                     "a class allows"):
    data.partition_users(ds, 2, mode="label", batch_size=11)
  # Two users of class 0 need 2 x 6 examples.
  with pytest.raises(ValueError, match="2 user\\(s\\) of class 0 need 12"):
    data.partition_users(ds, 11, mode="label", batch_size=6)
  with pytest.raises(TypeError, match="'batch_size' must be a positive int"):
    data.partition_users(ds, 2, batch_size=2.0)
