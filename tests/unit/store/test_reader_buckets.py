"""The bucketed-store reader contract (issue #25): `LatentStore.buckets`, `bucket_view(b)`, the
one-line refusal of single-shape APIs on a bucketed root, and a square store as one bucket.

Oracle: the arrays `write_synthetic_bucketed_store` handed to the writer, and the store's files read
with zarr/pyarrow directly.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from lplkit.errors import StoreError
from lplkit.store import LatentStore
from lplkit.store.buckets import Bucket
from lplkit.store.synthetic import write_synthetic_bucketed_store, write_synthetic_store

SIZES = [(64, 128), (64, 64), (128, 64)]  # (W, H) pixels, factor 8 -> latents (4, H/8, W/8)
ROWS = [21, 5, 40]
SKIPPED = (3, 26, 60)  # global positions: one in each bucket


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("bk") / "s.zarr")
    arrays = write_synthetic_bucketed_store(
        url, sizes=SIZES, rows=ROWS, flips=True, skipped=SKIPPED, shard_size=16, captions=True
    )
    return url, arrays


def test_buckets_and_global_order(bucketed):
    url, _ = bucketed
    store = LatentStore.open(url)
    assert store.bucketed and len(store) == sum(ROWS) and store.n_ok == sum(ROWS) - len(SKIPPED)
    starts = np.concatenate([[0], np.cumsum(ROWS)[:-1]])
    assert store.buckets == [
        Bucket(b, SIZES[b], (4, SIZES[b][1] // 8, SIZES[b][0] // 8), ROWS[b], int(starts[b]))
        for b in range(3)
    ]
    # the root index.parquet, read with pyarrow: one row per global position, its bucket column
    index = pq.read_table(f"{url}/index.parquet").to_pydict()
    assert index["position"] == list(range(sum(ROWS)))
    assert index["bucket"] == [b for b in range(3) for _ in range(ROWS[b])]
    assert index["key"] == [f"img_{p:06d}" for p in range(sum(ROWS))]
    assert [p for p, s in enumerate(index["status"]) if s == "skipped"] == list(SKIPPED)
    assert store.bucket_of([0, 20, 21, 26, 65]).tolist() == [0, 0, 1, 2, 2]
    assert store.labels.tolist() == [p % 10 for p in range(sum(ROWS))]


def test_bucket_view_reads_the_written_arrays(bucketed):
    url, arrays = bucketed
    store = LatentStore.open(url)
    for b in range(3):
        view = store.bucket_view(b)
        c, h, w = view.latent_shape
        assert (h, w) == (SIZES[b][1] // 8, SIZES[b][0] // 8) and len(view) == ROWS[b]
        raw = zarr.open_group(f"{url}/buckets/{b}", mode="r")["moments"][:]
        assert raw.shape == (ROWS[b], 2, c, h, w)
        mean, _std = view.read(np.arange(ROWS[b]))
        np.testing.assert_array_equal(mean, raw[:, 0].astype(np.float32))
        np.testing.assert_allclose(mean, arrays[b]["moments"][:, 0], atol=2e-3, rtol=1e-3)
        mean_f, _ = view.read([1], flip=True)
        np.testing.assert_allclose(mean_f[0], arrays[b]["moments_flip"][1, 0], atol=2e-3, rtol=1e-3)
        start = store.buckets[b].start
        skipped = [p - start for p in SKIPPED if start <= p < start + ROWS[b]]
        assert sorted(set(range(ROWS[b])) - set(view.ok_positions.tolist())) == skipped
        assert view.rows([0]).column("key").to_pylist() == [f"img_{start:06d}"]
        seen = []
        for latents, _labels, pos in view.batches(4, seed=0, with_index=True, drop_last=False):
            assert tuple(latents.shape[1:]) == (c, h, w)
            seen += pos.tolist()
        assert sorted(set(seen)) == view.ok_positions.tolist()
        item = view.as_dataset()[0]
        assert tuple(item["latent"].shape) == (c, h, w)
    assert store.bucket_view(1) is store.bucket_view(1)  # opened once
    budgets = [store.bucket_view(b).memory_budget for b in range(3)]
    assert sum(budgets) <= store.memory_budget


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.latent_shape,
        lambda s: s.read([0]),
    ],
)
def test_single_shape_apis_refuse_a_bucketed_root(bucketed, call):
    store = LatentStore.open(bucketed[0])
    with pytest.raises(
        StoreError, match=r"bucketed \(3 bucket\(s\): 64x128, 64x64, 128x64\).*bucket_view"
    ):
        call(store)


def test_square_store_is_one_bucket(tmp_path):
    write_synthetic_store(tmp_path / "s.zarr", count=30, latent_shape=(4, 8, 8))
    store = LatentStore.open(tmp_path / "s.zarr")
    assert not store.bucketed
    assert store.buckets == [Bucket(0, (64, 64), (4, 8, 8), 30, 0)]
    assert store.bucket_view(0) is store and store.latent_shape == (4, 8, 8)
    assert "buckets" not in store.manifest
    with pytest.raises(IndexError):
        store.bucket_view(1)
