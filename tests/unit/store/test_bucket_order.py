"""The bucket schedule: a seeded permutation of each bucket's global batches, counted by hand."""

from __future__ import annotations

import numpy as np

from lplkit.store.bucket_order import (
    bucket_batch_counts,
    bucket_schedule,
    bucket_seed,
    bucket_starts,
)

COUNTS = [21, 5, 40, 0, 13]


def test_schedule_is_the_multiset_of_each_buckets_full_batches():
    for g in (1, 4, 6):
        sched = bucket_schedule(COUNTS, g, seed=3, epoch=1)
        want = [n // g for n in COUNTS]  # hand count: incomplete batches dropped
        assert np.bincount(sched, minlength=len(COUNTS)).tolist() == want
        padded = bucket_schedule(COUNTS, g, seed=3, epoch=1, drop_last=False)
        assert np.bincount(padded, minlength=len(COUNTS)).tolist() == [-(-n // g) for n in COUNTS]
    assert bucket_batch_counts(COUNTS, 4).sum() == 5 + 1 + 10 + 0 + 3


def test_schedule_is_seeded_by_seed_and_epoch_and_interleaves():
    a = bucket_schedule(COUNTS, 2, seed=0, epoch=0)
    assert np.array_equal(a, bucket_schedule(COUNTS, 2, seed=0, epoch=0))
    assert not np.array_equal(a, bucket_schedule(COUNTS, 2, seed=0, epoch=1))
    assert not np.array_equal(a, bucket_schedule(COUNTS, 2, seed=1, epoch=0))
    assert not np.array_equal(a, np.sort(a))  # buckets interleaved, not one after the other
    assert np.array_equal(bucket_schedule(COUNTS, 2, seed=0, epoch=0, shuffle=False), np.sort(a))


def test_bucket_proportions_over_many_epochs():
    """Each step's bucket is b with probability k_b / sum(k): check the first step's frequency."""
    g = 4
    k = np.asarray([n // g for n in COUNTS], dtype=float)
    first = [bucket_schedule(COUNTS, g, seed=7, epoch=e)[0] for e in range(3000)]
    freq = np.bincount(first, minlength=len(COUNTS)) / len(first)
    np.testing.assert_allclose(freq, k / k.sum(), atol=0.03)


def test_starts_count_earlier_batches_of_each_bucket():
    sched = bucket_schedule(COUNTS, 2, seed=5, epoch=2)
    for step in (0, 1, 7, len(sched)):
        hand = [int(np.sum(sched[:step] == b)) for b in range(len(COUNTS))]
        assert bucket_starts(sched, step, len(COUNTS)).tolist() == hand


def test_bucket_seeds_differ():
    seeds = {bucket_seed(0, b) for b in range(8)} | {bucket_seed(1, b) for b in range(8)}
    assert len(seeds) == 16
