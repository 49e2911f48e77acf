"""Which aspect-ratio bucket each batch of an epoch comes from (pure numpy; no I/O).

A bucketed store (`lplkit encode --buckets`) holds latents of several shapes; a batch must hold one.
With ``G = batch_size x world_size`` rows per global batch and ``n_b`` ok rows in bucket ``b``:

1. bucket ``b`` gives ``k_b = floor(n_b / G)`` global batches per epoch (``drop_last=False``:
   ``ceil``, the last one padded from the bucket's own order like a square store's);
2. the epoch's schedule is a uniformly random permutation (``rng(seed, epoch)``) of the multiset
   ``{b repeated k_b times}``: step ``j`` of the epoch draws from bucket ``schedule[j]``, so buckets
   are visited in proportion to their row counts, interleaved, not one after the other;
3. the ``i``-th occurrence of ``b`` in the schedule is batch ``i`` of bucket ``b``'s own epoch
   order (the square loader's order of that bucket, seeded by :func:`bucket_seed`).

Everything is a function of (seed, epoch, step, counts, G): every DDP rank computes the same
schedule, so all ranks draw the same bucket at the same step (each its own rows of the global
batch), and resuming at step ``j`` needs only ``(epoch, j)``: bucket ``b`` resumes at its batch
``count of b in schedule[:j]`` (:func:`bucket_starts`).

Incomplete final batches (``n_b mod G`` rows of each bucket) are dropped, as SDXL-style bucketing
trainers (kohya sd-scripts, SimpleTuner) do: carrying them over would mix shapes in a batch or
delay rows to a later epoch. Nothing is lost for good: each bucket's order is reshuffled every
epoch, so a different remainder is dropped each time.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bucket_batch_counts", "bucket_schedule", "bucket_seed", "bucket_starts"]

_SCHEDULE_TAG = 0xB0C
_BUCKET_TAG = 0xB5


def bucket_batch_counts(
    counts: list[int] | np.ndarray, global_batch: int, drop_last: bool = True
) -> np.ndarray:
    """Global batches per epoch of each bucket: ``n_b // G`` (``drop_last=False``: ``ceil``)."""
    if global_batch < 1:
        raise ValueError(f"global batch must be >= 1, got {global_batch}")
    n = np.asarray(counts, dtype=np.int64)
    return n // global_batch if drop_last else -(-n // global_batch)


def bucket_schedule(
    counts: list[int] | np.ndarray,
    global_batch: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = True,
) -> np.ndarray:
    """The bucket id (index into ``counts``) of every global batch of the epoch (int64).

    Without ``shuffle`` the buckets come one after the other, in id order.
    """
    k = bucket_batch_counts(counts, global_batch, drop_last)
    multiset = np.repeat(np.arange(len(k), dtype=np.int64), k)
    if not shuffle:
        return multiset
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), _SCHEDULE_TAG]))
    return multiset[rng.permutation(len(multiset))]


def bucket_starts(schedule: np.ndarray, step: int, n_buckets: int) -> np.ndarray:
    """For each bucket, how many of its batches come before epoch step ``step``: where its own
    order resumes."""
    return np.bincount(np.asarray(schedule[:step], dtype=np.int64), minlength=n_buckets)


def bucket_seed(seed: int, bucket: int) -> int:
    """The seed of bucket ``bucket``'s own order and draws: a hash of (seed, bucket), so buckets do
    not share noise streams."""
    state = np.random.SeedSequence([int(seed), int(bucket), _BUCKET_TAG]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])
