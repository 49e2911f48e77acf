"""Bucketed batches: one bucket per batch, each row once per epoch, exact resume, 2 ranks = 1 rank.

Oracles: the rows `write_synthetic_bucketed_store` wrote (bucket ranges, skipped rows, moments),
hand counts of the schedule, and an uninterrupted single-rank epoch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lplkit.store import LatentStore
from lplkit.store.synthetic import write_synthetic_bucketed_store

SIZES = [(64, 128), (64, 64), (128, 64)]  # (W, H): latents (4, 16, 8), (4, 8, 8), (4, 8, 16)
ROWS = [21, 9, 40]
SKIPPED = (3, 26, 60)
STARTS = [0, 21, 30]


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("bl") / "s.zarr")
    arrays = write_synthetic_bucketed_store(
        url, sizes=SIZES, rows=ROWS, flips=True, skipped=SKIPPED, shard_size=16, dtype="float32"
    )
    return url, arrays


def _ok_rows(b):
    return [p for p in range(STARTS[b], STARTS[b] + ROWS[b]) if p not in SKIPPED]


def _epoch(store, batch_size, **kw):
    return list(store.batches(batch_size, seed=4, with_index=True, **kw))


@pytest.mark.parametrize("budget", [None, 4096])  # whole buckets in RAM / per-rank windows
def test_each_batch_one_bucket_each_row_once(bucketed, budget):
    url, arrays = bucketed
    kw = {} if budget is None else {"memory_budget": budget}
    store = LatentStore.open(url, **kw)
    B = 4
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    batches = _epoch(store, B)
    for latents, labels, positions in batches:
        b = int(np.searchsorted(STARTS, int(positions[0]), side="right")) - 1
        pos = positions.numpy()
        assert ((pos >= STARTS[b]) & (pos < STARTS[b] + ROWS[b])).all()  # one bucket
        w, h = SIZES[b]
        assert latents.shape == (B, 4, h // 8, w // 8)
        assert labels.tolist() == (pos % 10).tolist()
        # z = mean + std * eps of the rows the writer wrote (either copy: flips)
        local = pos - STARTS[b]
        dev = [
            np.abs((latents.numpy() - m[local, 0]) / m[local, 1]).reshape(B, -1).max(axis=1)
            for m in (arrays[b]["moments"], arrays[b]["moments_flip"])
        ]
        assert (np.minimum(*dev) < 6).all()  # each row near one of its own two copies
        seen[b] += pos.tolist()
    assert len(batches) == store.num_batches(B) == sum(len(_ok_rows(b)) // B for b in range(3))
    for b in range(3):
        ok = _ok_rows(b)
        assert len(seen[b]) == len(set(seen[b])) == len(ok) // B * B  # each row at most once
        assert set(seen[b]) <= set(ok)  # never a skipped row, never another bucket's


def test_resume_equals_uninterrupted(bucketed):
    store = LatentStore.open(bucketed[0])
    full = _epoch(store, 3, epoch=2)
    for j in (1, 5, len(full) - 1):
        tail = _epoch(LatentStore.open(bucketed[0]), 3, epoch=2, start_batch=j)
        assert len(tail) == len(full) - j
        for a, b in zip(full[j:], tail, strict=True):
            for x, y in zip(a, b, strict=True):
                assert torch.equal(x, y)


def test_two_ranks_equal_one_rank(bucketed):
    store = LatentStore.open(bucketed[0])
    one = _epoch(store, 4, epoch=1)
    r0 = _epoch(store, 2, epoch=1, rank=0, world_size=2)
    r1 = _epoch(store, 2, epoch=1, rank=1, world_size=2)
    assert len(one) == len(r0) == len(r1)
    for a, b, c in zip(one, r0, r1, strict=True):
        for x, y, z in zip(a, b, c, strict=True):
            assert torch.equal(x, torch.cat([y, z]))


def test_epochs_differ_and_visit_buckets_interleaved(bucketed):
    store = LatentStore.open(bucketed[0])
    order = [int(p[0]) for _, _, p in _epoch(store, 2, epoch=0)]
    other = [int(p[0]) for _, _, p in _epoch(store, 2, epoch=1)]
    assert order != other
    buckets = np.searchsorted(STARTS, order, side="right") - 1
    assert (np.diff(buckets) != 0).sum() > 2  # not bucket after bucket


def test_bucket_batch_sampler_with_a_dataloader(bucketed):
    store = LatentStore.open(bucketed[0])
    ds = store.as_dataset(seed=1, keys=False)
    B = 3
    sampler = ds.batch_sampler(B, seed=2)
    got = list(DataLoader(ds, batch_sampler=sampler))
    assert len(got) == len(sampler) == sum(len(_ok_rows(b)) // B for b in range(3))
    per_bucket: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for item in got:
        pos = item["position"].numpy()
        b = int(np.searchsorted(STARTS, int(pos[0]), side="right")) - 1
        assert ((pos >= STARTS[b]) & (pos < STARTS[b] + ROWS[b])).all()
        assert item["latent"].shape == (B, 4, SIZES[b][1] // 8, SIZES[b][0] // 8)
        per_bucket[b] += pos.tolist()
    for b in range(3):
        assert len(per_bucket[b]) == len(set(per_bucket[b])) == len(_ok_rows(b)) // B * B
        assert set(per_bucket[b]) <= set(_ok_rows(b))
    # 2 ranks = 1 rank with the global batch; resume = the uninterrupted tail
    one = list(ds.batch_sampler(4, seed=2))
    ranks = [list(ds.batch_sampler(2, seed=2, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks, strict=True)] == one
    tail = ds.batch_sampler(4, seed=2)
    tail.set_epoch(0, start_batch=3)
    assert list(tail) == one[3:]
    sampler.set_epoch(1)
    assert list(sampler) != list(ds.batch_sampler(B, seed=2))  # a new epoch, a new order


def test_square_store_sampler_is_plain_batches(tmp_path):
    from lplkit.store.synthetic import write_synthetic_store

    write_synthetic_store(tmp_path / "s.zarr", count=20, latent_shape=(4, 8, 8))
    ds = LatentStore.open(tmp_path / "s.zarr").as_dataset(keys=False)
    idx = [i for batch in ds.batch_sampler(6, seed=0) for i in batch]
    assert len(idx) == 18 and len(set(idx)) == 18 and set(idx) <= set(range(20))
