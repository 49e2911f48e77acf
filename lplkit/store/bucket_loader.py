"""Batches of a bucketed store: every batch from one aspect-ratio bucket (`lplkit.store.bucket_order`).

- :func:`bucket_batches`: ``LatentStore.batches`` over several buckets. Step ``j`` of an epoch
  serves the next batch of bucket ``schedule[j]`` from that bucket's own loader
  (``store.bucket_view(b).batches``, seeded by ``bucket_seed(seed, b)``), so within a bucket
  everything the square loader guarantees holds (windows, DDP split, per-sample draws, exact
  resume), and the schedule adds which bucket each step uses. Positions (``with_index``) are
  global store positions.
- :class:`BucketBatchSampler`: the same for a user's own ``DataLoader`` over a
  :class:`~lplkit.store.dataset.LatentDataset`: a torch ``Sampler`` yielding lists of dataset
  indices, one bucket per list, with the same schedule.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from lplkit.store import bucket_order as bo

__all__ = ["BucketBatchSampler", "bucket_batches"]


def _split(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank() if rank is None else rank
            world_size = torch.distributed.get_world_size() if world_size is None else world_size
        else:
            rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} not in [0, {world_size})")
    return rank, world_size


def bucket_batches(
    store: Any,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    epoch: int = 0,
    start_batch: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = True,
    with_index: bool = False,
    text: Any = False,
) -> Iterator[tuple[Any, ...]]:
    """One epoch of one rank over a bucketed store: ``(latents (B, C, h_b, w_b), labels[,
    positions][, text])`` with each batch's shape that of its bucket (see the module doc)."""
    rank, world_size = _split(rank, world_size)
    views = [store.bucket_view(b.id) for b in store.buckets]
    starts = [int(b.start) for b in store.buckets]
    counts = [int(v.n_ok) for v in views]
    schedule = bo.bucket_schedule(counts, batch_size * world_size, seed=seed, epoch=epoch,
                                  shuffle=shuffle, drop_last=drop_last)  # fmt: skip
    first = bo.bucket_starts(schedule, start_batch, len(views))
    open_: dict[int, Iterator[tuple[Any, ...]]] = {}
    for j in range(start_batch, len(schedule)):
        b = int(schedule[j])
        if b not in open_:
            open_[b] = iter(
                views[b].batches(
                    batch_size, seed=bo.bucket_seed(seed, b), shuffle=shuffle, epoch=epoch,
                    start_batch=int(first[b]), rank=rank, world_size=world_size,
                    drop_last=drop_last, with_index=with_index, text=text,
                )
            )  # fmt: skip
        batch = next(open_[b])
        if with_index:  # the view's positions 0..n_b-1 -> the store's
            batch = (*batch[:2], batch[2] + starts[b], *batch[3:])
        yield batch


def num_bucket_batches(
    store: Any,
    batch_size: int,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = True,
) -> int:
    """Batches per epoch of one rank over a bucketed store (equal on every rank)."""
    _, world_size = _split(rank, world_size)
    counts = [int(store.bucket_view(b.id).n_ok) for b in store.buckets]
    return int(bo.bucket_batch_counts(counts, batch_size * world_size, drop_last).sum())


class BucketBatchSampler(Sampler[list[int]]):
    """Lists of :class:`LatentDataset` indices, every list from one bucket (``batch_sampler=`` of a
    ``DataLoader``); the bucket schedule of :func:`lplkit.store.bucket_order.bucket_schedule`.

    Each epoch (``set_epoch``), bucket ``b``'s dataset indices are permuted (``rng(seed, epoch,
    b)``) and cut into global batches of ``batch_size x world_size``; the incomplete remainder is
    dropped (module doc of ``bucket_order``); global batch ``j`` is the next one of bucket
    ``schedule[j]`` and rank ``r`` takes its ``r``-th block of ``batch_size``. A square store is
    one bucket: plain shuffled batches. ``start_batch`` skips the first batches of the epoch
    (resume), ``set_epoch`` resets it to 0.

    Args:
        dataset: a :class:`LatentDataset` (its store's ``buckets`` and its ok ``positions``).
        rank, world_size: this process's share (default: torch.distributed's when initialized).
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        start_batch: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.rank, self.world_size = _split(rank, world_size)
        self.epoch, self.start_batch = 0, int(start_batch)
        positions = np.asarray(dataset.positions, dtype=np.int64)
        # dataset indices of each bucket: positions are sorted and buckets are contiguous ranges
        self.members = []
        for b in dataset.store.buckets:
            lo, hi = np.searchsorted(positions, [int(b.start), int(b.start) + int(b.rows)])
            self.members.append(np.arange(lo, hi, dtype=np.int64))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Another epoch's order (as ``DistributedSampler.set_epoch``), from batch ``start_batch``."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def schedule(self) -> np.ndarray:
        """The bucket of every global batch of the current epoch."""
        return bo.bucket_schedule([len(m) for m in self.members],
                                  self.batch_size * self.world_size, seed=self.seed,
                                  epoch=self.epoch, shuffle=self.shuffle)  # fmt: skip

    def __len__(self) -> int:
        counts = [len(m) for m in self.members]
        total = bo.bucket_batch_counts(counts, self.batch_size * self.world_size).sum()
        return max(0, int(total) - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        g = self.batch_size * self.world_size
        orders = []
        for b, m in enumerate(self.members):
            if self.shuffle:
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, b]))
                m = m[rng.permutation(len(m))]
            orders.append(m)
        schedule = self.schedule()
        nth = bo.bucket_starts(schedule, self.start_batch, len(orders))
        for j in range(self.start_batch, len(schedule)):
            b = int(schedule[j])
            lo = int(nth[b]) * g + self.rank * self.batch_size
            nth[b] += 1
            yield orders[b][lo : lo + self.batch_size].tolist()
