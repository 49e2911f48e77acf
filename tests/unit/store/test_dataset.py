"""The store in torch's DataLoader: LatentBatches == LatentStore.batches bitwise, LatentDataset items
against the moments read with zarr/pyarrow directly, batches(with_index=True) joined to index.parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers.stores import read_store
from torch.utils.data import DataLoader, get_worker_info

from lplkit.errors import ConfigError
from lplkit.store import LatentBatches, LatentDataset, LatentStore, StoreWriter, new_manifest
from lplkit.store.synthetic import synthetic_moments, write_synthetic_store

N, SHAPE = 40, (4, 4, 4)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    """40 samples with flips, position 5 skipped, captions on even positions; 3 windows of chunks
    when opened with a small memory budget."""
    path = tmp_path_factory.mktemp("ds") / "s.zarr"
    moments = synthetic_moments(N, SHAPE, seed=1)
    moments[:, 0] += np.arange(N, dtype=np.float32)[:, None, None, None]  # mean ~ position
    flip = synthetic_moments(N, SHAPE, seed=2)
    flip[:, 0] -= 100 + np.arange(N, dtype=np.float32)[:, None, None, None]
    manifest = new_manifest(autoencoder={"id": "synthetic", "class": "AutoencoderKL",
                                         "config_hash": "0"}, resolution=32, latent_shape=SHAPE,
                            source={"id": "ds", "split": "train", "revision": None, "count": N},
                            dtype="float32", flips=True, shard_size=16, chunk_size=4,
                            codec="none")  # fmt: skip
    labels = (np.arange(N) % 3).astype(np.int32)
    with StoreWriter.create_or_resume(str(path), manifest) as w:
        for s in w.pending_shards():
            lo, hi = w.shard_range(s)
            rows = [{"key": f"img{p}", "caption": f"a photo {p}" if p % 2 == 0 else None,
                     "status": "skipped" if p == 5 else "ok",
                     "reason": "test" if p == 5 else None} for p in range(lo, hi)]  # fmt: skip
            w.write_shard(s, moments[lo:hi], flip[lo:hi], labels[lo:hi], rows)
        w.finalize()
    return path


def _eps(latent: torch.Tensor, pos: int, raw: dict, flipped: bool) -> np.ndarray:
    """The noise that turns the stored moments of `pos` into `latent`."""
    m = raw["moments_flip" if flipped else "moments"][pos]
    return (latent.numpy() - m[0]) / m[1]


@pytest.mark.parametrize("budget", [1 << 30, 1500])  # whole store in RAM / streamed windows
def test_latent_batches_in_a_dataloader_equal_batches(store_path, budget):
    store = LatentStore.open(str(store_path), memory_budget=budget)
    want = list(store.batches(6, seed=3, epoch=1))
    ds = LatentBatches(LatentStore.open(str(store_path), memory_budget=budget), 6, seed=3)
    ds.set_epoch(1)
    got = list(DataLoader(ds, batch_size=None))
    assert len(got) == len(want) == len(ds) == 39 // 6
    for (zg, yg), (zw, yw) in zip(got, want, strict=True):
        assert torch.equal(zg, zw) and torch.equal(yg, yw)


def test_batches_with_index_join_the_parquet_rows(store_path):
    raw = read_store(store_path)
    table = pq.read_table(store_path / "index.parquet")
    by_pos = {r["position"]: r for r in table.to_pylist()}
    store = LatentStore.open(str(store_path), memory_budget=1500)
    plain = list(store.batches(8, seed=0))
    seen = []
    for (z, y, pos), (z0, y0) in zip(store.batches(8, seed=0, with_index=True), plain, strict=True):
        assert torch.equal(z, z0) and torch.equal(y, y0)
        rows = store.rows(pos).to_pylist()
        assert [r["position"] for r in rows] == pos.tolist()
        assert [r["key"] for r in rows] == [by_pos[p]["key"] for p in pos.tolist()]
        assert (
            y.tolist() == [by_pos[p]["label"] for p in pos.tolist()] == raw["labels"][pos].tolist()
        )
        for latent, p in zip(z, pos.tolist(), strict=True):  # each latent is its position's draw
            assert min(np.abs(_eps(latent, p, raw, f)).max() for f in (False, True)) < 6
        seen += pos.tolist()
    assert 5 not in seen and len(set(seen)) == len(seen) == 32
    with pytest.raises(IndexError):
        store.rows([5, 999])


def test_latent_dataset_items(store_path):
    raw = read_store(store_path)
    ds = LatentStore.open(str(store_path)).as_dataset(seed=7)
    assert isinstance(ds, LatentDataset) and len(ds) == N - 1
    item = ds[5]  # the sixth ok sample: position 6 (5 is skipped)
    assert item["position"] == 6 and item["key"] == "img6" and item["caption"] == "a photo 6"
    assert item["label"] == int(raw["labels"][6]) and ds[4]["caption"] == "a photo 4"
    assert ds[6]["caption"] == ""  # position 7: no caption
    bare = LatentStore.open(str(store_path))
    plain = bare.as_dataset(seed=7, keys=False)
    assert set(plain[5]) == {"latent", "label", "position"} and not bare._columns  # nothing read
    assert torch.equal(plain[5]["latent"], item["latent"])
    flips = []
    for i in range(len(ds)):
        it = ds[i]
        e = {f: np.abs(_eps(it["latent"], it["position"], raw, f)).max() for f in (False, True)}
        assert min(e.values()) < 6
        flips.append(e[True] < e[False])
    assert 5 < sum(flips) < N - 5  # both the image and its flip are drawn
    assert torch.equal(ds[3]["latent"], ds[3]["latent"])  # deterministic
    before = ds[3]["latent"].clone()
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["latent"], before)


def test_no_caption_is_the_empty_string_in_rows_index_and_dataset_items(store_path):
    """index.parquet holds null where the source had no caption (odd positions here); every read
    API gives "" for it (one value), and a caption where there is one, the same in each."""
    on_disk = pq.read_table(store_path / "index.parquet").column("caption").to_pylist()
    assert on_disk[7] is None and on_disk[6] == "a photo 6"  # the file is unchanged
    want = [f"a photo {p}" if p % 2 == 0 else "" for p in range(N)]  # by hand
    store = LatentStore.open(str(store_path))
    ds = store.as_dataset()
    positions = [int(p) for p in ds.positions]
    assert [ds[i]["caption"] for i in range(len(ds))] == [want[p] for p in positions]
    assert store.rows(positions).column("caption").to_pylist() == [want[p] for p in positions]
    assert store.index_column("caption").to_pylist() == want
    assert store.index.column("caption").to_pylist() == want
    batch = next(iter(DataLoader(ds, batch_size=4)))  # torch's default collate (refuses None)
    assert batch["caption"] == [want[p] for p in positions[:4]]


def test_latent_dataset_in_a_shuffled_multiworker_dataloader(store_path):
    ds = LatentStore.open(str(store_path)).as_dataset(seed=1, flip=False)
    ref = {ds[i]["position"]: ds[i]["latent"] for i in range(len(ds))}
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    seen = 0
    for batch in loader:
        assert batch["latent"].shape == (len(batch["position"]), *SHAPE)
        assert isinstance(batch["caption"], list) and isinstance(batch["key"], list)
        for latent, pos in zip(batch["latent"], batch["position"].tolist(), strict=True):
            assert torch.equal(latent, ref[pos])  # same draw in any worker, any order
        seen += len(batch["position"])
    assert seen == N - 1


def test_latent_batches_refuses_worker_processes(store_path):
    ds = LatentBatches(LatentStore.open(str(store_path)), 4)
    with pytest.raises(ConfigError, match="num_workers=0"):
        _in_fake_worker(ds)


def _in_fake_worker(ds):
    from unittest import mock

    from torch.utils.data._utils import worker

    info = worker.WorkerInfo(id=0, num_workers=2, seed=0, dataset=ds)
    with mock.patch("lplkit.store.dataset.get_worker_info", return_value=info):
        return iter(ds)


class _WhereServed(LatentDataset):
    """Items tagged with the worker that served them and whether it held the store in RAM."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        info = get_worker_info()
        item["worker"] = -1 if info is None else info.id
        item["in_ram"] = self.store._ram is not None
        return item


@pytest.mark.parametrize("codec", ["none", "zstd"])  # row preads / zarr chunk reads
def test_latent_dataset_above_the_budget_in_two_workers_serves_every_row_once(tmp_path, codec):
    """A store 5x the memory budget in a shuffled 2-worker DataLoader: every ok row once per epoch,
    each item equal to the in-process one, from both workers, neither holding the store in RAM."""
    url = str(tmp_path / "s.zarr")
    write_synthetic_store(url, count=60, latent_shape=SHAPE, flips=True, shard_size=16,
                          chunk_size=4, codec=codec, skipped=(7, 31))  # fmt: skip
    store = LatentStore.open(url)
    budget = store.n_chunks * store.bytes_per_chunk // 5
    store = LatentStore.open(url, memory_budget=budget)
    assert store.reads_rows == (codec == "none")
    ds = _WhereServed(store, seed=2)
    ok = [p for p in range(60) if p not in (7, 31)]
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        ref = {p: ds[i]["latent"] for i, p in enumerate(ok)}  # in this process
        loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2,
                            generator=torch.Generator().manual_seed(epoch))  # fmt: skip
        served, workers = [], set()
        for batch in loader:
            assert not batch["in_ram"].any()
            workers |= set(batch["worker"].tolist())
            for latent, pos in zip(batch["latent"], batch["position"].tolist(), strict=True):
                assert torch.equal(latent, ref[pos])
            served += batch["position"].tolist()
        assert sorted(served) == ok
        assert workers == {0, 1}
