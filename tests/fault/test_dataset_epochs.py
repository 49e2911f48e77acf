"""`set_epoch` reaches persistent DataLoader workers (issue #28, bug 4).

With `persistent_workers=True` each worker keeps the copy of the dataset it got at the first epoch;
an epoch kept in a plain attribute stayed 0 there, so every later epoch repeated epoch 0's noise and
flips bit for bit. The oracle for epoch `e` is the same dataset iterated in the main process
(`num_workers=0`) after `set_epoch(e)`: items are a pure function of (seed, epoch, position).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from lplkit.store import LatentBatches, LatentStore
from lplkit.store.synthetic import write_synthetic_store

N = 16


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("epochs") / "s.zarr")
    write_synthetic_store(url, count=N, latent_shape=(2, 2, 2), flips=True, shard_size=8,
                          chunk_size=4)  # fmt: skip
    return url


def _epochs(loader: DataLoader, ds, epochs: int, key=lambda b: b["latent"]) -> list[torch.Tensor]:
    out = []
    for e in range(epochs):
        ds.set_epoch(e)
        out.append(torch.cat([key(b) for b in loader]))
    return out


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_latent_dataset_epochs_reach_persistent_workers(store_url, context):
    ds = LatentStore.open(store_url).as_dataset(seed=3)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True,
                        multiprocessing_context=context)  # fmt: skip
    got = _epochs(loader, ds, 3)
    oracle = LatentStore.open(store_url).as_dataset(seed=3)
    want = _epochs(DataLoader(oracle, batch_size=4), oracle, 3)
    for e in range(3):
        assert torch.equal(got[e], want[e]), f"epoch {e} differs from its draws"
    assert not torch.equal(want[0], want[1]) and not torch.equal(want[1], want[2])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_latent_batches_epochs_reach_a_persistent_worker(store_url, context):
    ds = LatentBatches(LatentStore.open(store_url), 4, seed=3)
    loader = DataLoader(ds, batch_size=None, num_workers=1, persistent_workers=True,
                        multiprocessing_context=context)  # fmt: skip
    got = _epochs(loader, ds, 2, key=lambda b: b[0])
    store = LatentStore.open(store_url)
    for e in range(2):
        want = torch.cat([z for z, _ in store.batches(4, seed=3, epoch=e)])
        assert torch.equal(got[e], want), f"epoch {e} differs from store.batches(epoch={e})"
