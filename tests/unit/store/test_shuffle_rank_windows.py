"""Above the memory budget, DDP ranks partition each window's chunks (issue #27 item 3): an epoch
over all ranks serves every ok row once and reads the store about once, not once per rank; the
order is computed per window (no per-row permutation of the epoch); resume is exact per rank."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from lplkit.store import LatentStore
from lplkit.store.shuffle import ChunkTable, RankOrder
from lplkit.store.synthetic import write_synthetic_store

COUNT, CHUNK, WORLD = 250, 4, 2
SKIPPED = (3, 40, 41, 42, 43, 44, 199)  # a whole chunk (40..43) and holes elsewhere
OK = [p for p in range(COUNT) if p not in SKIPPED]


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("ranks") / "s.zarr")
    write_synthetic_store(url, count=COUNT, latent_shape=(2, 2, 2), flips=True, shard_size=16,
                          chunk_size=CHUNK, skipped=SKIPPED, num_classes=COUNT)  # fmt: skip
    return url


def _open(url: str) -> LatentStore:
    """The store with windows of 3 chunks (budget: 3 windows, well below the store's 63 chunks)."""
    s = LatentStore.open(url)
    s = LatentStore.open(url, memory_budget=9 * s.bytes_per_chunk)
    assert s.window_chunks() == 3 and s.n_chunks > 9
    return s


def _counting(store: LatentStore) -> list[int]:
    """Record every chunk the store reads from its shard files (the `moments` array), whole (a
    window) or a row of it (a batch served while its window is still being read)."""
    assert store._direct is not None  # raw local store: chunks and rows are read by ShardRows
    reads: list[int] = []
    rows = store._direct["moments"]
    whole, single = rows.read_chunks, rows.read

    def read_chunks(chunks, out):
        reads.extend(np.asarray(chunks).tolist())
        whole(chunks, out)

    def read(positions, out):
        reads.extend((np.asarray(positions) // CHUNK).tolist())
        single(positions, out)

    rows.read_chunks = read_chunks  # type: ignore[method-assign]
    rows.read = read  # type: ignore[method-assign]
    return reads


@pytest.mark.parametrize("drop_last", [False, True])
def test_two_ranks_serve_every_row_once_and_read_only_their_own_chunks(url, drop_last):
    served, read = [], []
    for rank in range(WORLD):
        store = _open(url)
        reads = _counting(store)
        for _, labels in store.batches(8, seed=4, epoch=1, rank=rank, world_size=WORLD,
                                       drop_last=drop_last):  # fmt: skip
            served.append(labels.numpy())  # labels are the positions (num_classes = COUNT)
        read.append(set(reads))
    served_all = np.concatenate(served)
    counts = np.bincount(served_all, minlength=COUNT)
    assert counts[list(SKIPPED)].sum() == 0
    if drop_last:  # every served row once; fewer than one global batch (8 x 2) dropped
        assert counts.max() == 1 and len(OK) - 16 < counts.sum() <= len(OK)
    else:  # every ok row once (243 ok rows, 2 ranks: one is repeated to even the ranks out)
        assert (counts[OK] >= 1).all() and counts.sum() == len(OK) + 1
        assert (counts > 1).sum() == 1
    # Reads: the ranks' chunk sets overlap only in the few chunks of the rebalancing tail; one
    # rank reads about half the store (the old loader: every rank read every chunk)
    chunks_with_ok = {p // CHUNK for p in OK}
    assert read[0] | read[1] == chunks_with_ok
    assert len(read[0] & read[1]) <= 2
    assert max(len(r) for r in read) <= len(chunks_with_ok) // 2 + 2


def test_rank_order_is_the_documented_partition(url):
    """Each rank's own windows hold only chunks dealt to it (disjoint across ranks), at most 3
    chunks each, and the ranks' orders together are every ok position once."""
    store = _open(url)
    plans = [store.rank_order(seed=2, epoch=0, rank=r, world_size=WORLD, drop_last=True)
             for r in range(WORLD)]  # fmt: skip
    owned = []
    for plan in plans:
        chunks = set()
        for k in range(plan.n_windows - 1):  # own windows (the last one is the tail)
            w = plan.window_chunks(k)
            assert len(w) <= 3
            window = plan.window_samples(k)
            assert set((window // CHUNK).tolist()) <= set(w.tolist())
            chunks |= set(w.tolist())
        owned.append(chunks)
    assert not owned[0] & owned[1]
    orders = [p.positions(np.arange(p.length)) for p in plans]
    assert len(orders[0]) == len(orders[1]) == len(OK) // WORLD
    both = np.concatenate(orders)
    assert len(set(both.tolist())) == len(both) and set(both.tolist()) <= set(OK)


@pytest.mark.parametrize("start", [1, 6, 14])
def test_resume_of_one_rank_gives_its_identical_tail(url, start):
    full = list(_open(url).batches(8, seed=9, epoch=3, rank=1, world_size=WORLD))
    tail = list(_open(url).batches(8, seed=9, epoch=3, rank=1, world_size=WORLD,
                                   start_batch=start))  # fmt: skip
    assert len(tail) == len(full) - start > 0
    for (za, ya), (zb, yb) in zip(full[start:], tail, strict=True):
        assert torch.equal(za, zb) and torch.equal(ya, yb)


def test_the_window_order_is_not_materialized_per_row():
    """2**25 rows (an all-ok store of 64-row chunks), windows of 256 chunks: building a rank's
    order and its first batch allocates O(chunks + window), not O(rows) (the int64 order alone
    would take 256 MiB)."""
    table = ChunkTable(None, 1 << 25, 64)
    tracemalloc.start()
    try:
        plan = RankOrder(table, seed=0, epoch=0, rank=1, world_size=4, window=256, drop_last=True)
        first = plan.positions(plan.batch_span(0, 256))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20, peak
    assert plan.length == (1 << 25) // 4 and len(set((first // 64).tolist())) > 32
    assert set((first // 64).tolist()) <= set(plan.window_chunks(0).tolist())
