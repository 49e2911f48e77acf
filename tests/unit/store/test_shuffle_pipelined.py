"""`batches()` serves batches before the store (or its window) is read whole: while the background
read is still running, each batch reads only its own chunks, and the batches are bitwise those of a
store already held in RAM / windows already read."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from lplkit.store import LatentStore
from lplkit.store.synthetic import write_synthetic_store

N, CHUNK = 96, 4


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("pipe") / "s.zarr")
    write_synthetic_store(url, count=N, latent_shape=(2, 2, 2), flips=True, shard_size=16,
                          chunk_size=CHUNK, skipped=(5, 50))  # fmt: skip
    return url


@pytest.mark.parametrize(
    "budget", [1 << 30, 3 * 3 * 2 * CHUNK * 2 * 8 * 2]
)  # RAM / 3-chunk windows
def test_batches_while_the_background_read_runs(url, budget):
    want = list(LatentStore.open(url, memory_budget=budget).batches(8, seed=2, epoch=1))

    store = LatentStore.open(url, memory_budget=budget)
    release = threading.Event()
    served: list[np.ndarray] = []  # chunks read for single batches
    plain_load, plain_batch = store._load, store._load_batch

    def load(chunks, buffers=None):
        if threading.current_thread() is not threading.main_thread():
            release.wait(60)  # the background read finishes only after the epoch
        return plain_load(chunks, buffers)

    def load_batch(positions):
        served.append(np.unique(positions // CHUNK))
        return plain_batch(positions)

    store._load = load  # type: ignore[method-assign]
    store._load_batch = load_batch  # type: ignore[method-assign]
    chunks_read_for_batches: list[int] = []  # raw local store: batches read rows, not chunks
    assert store._direct is not None
    for rows in store._direct.values():

        def read_chunks(chunks, out, plain=rows.read_chunks):
            if threading.current_thread() is threading.main_thread():
                chunks_read_for_batches.append(len(chunks))
            plain(chunks, out)

        rows.read_chunks = read_chunks  # type: ignore[method-assign]
    it = store.batches(8, seed=2, epoch=1)
    try:
        got = [next(it) for _ in want]
    finally:
        release.set()  # the generator's end waits for the read it started
    assert next(it, None) is None
    assert len(got) == len(want) > 0
    for (z, y), (zw, yw) in zip(got, want, strict=True):
        assert torch.equal(z, zw) and torch.equal(y, yw)
    # every batch was served from its own chunks: at most 8 chunks each, never the whole store
    assert len(served) == len(want) and max(len(c) for c in served) <= 8
    assert not chunks_read_for_batches  # a chunk read would copy CHUNK rows per row served
