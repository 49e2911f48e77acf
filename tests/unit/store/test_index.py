"""`LatentStore.open` reads index.parquet by column and row group (`IndexFile`), checked against the
index and the labels array read whole with pyarrow and zarr directly; an index whose rows are not
in position order (statistics do not confirm it) is read whole and gives the same answers."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

from lplkit.store import LatentStore
from lplkit.store import index as idx
from lplkit.store.synthetic import write_synthetic_store

N, SKIPPED = 40, (3, 17, 39)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ix") / "s.zarr"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(idx, "ROW_GROUP", 8)  # 5 row groups
        write_synthetic_store(path, count=N, latent_shape=(2, 2, 2), shard_size=16, chunk_size=4,
                              skipped=SKIPPED, num_classes=7)  # fmt: skip
    return path


def _check(store: LatentStore, path) -> None:
    table = pq.read_table(path / "index.parquet")
    by_pos = {r["position"]: r for r in table.to_pylist()}
    labels = zarr.open_array(str(path / "labels"), mode="r")[:]
    np.testing.assert_array_equal(store.labels, labels)
    assert store.ok_positions.tolist() == [p for p in range(N) if p not in SKIPPED]
    assert store.n_ok == N - len(SKIPPED)
    pos = np.random.default_rng(0).permutation(N)[:13]
    assert store.rows(pos).to_pylist() == [by_pos[p] for p in pos.tolist()]
    assert store.index_column("key").to_pylist() == [by_pos[p]["key"] for p in range(N)]
    with pytest.raises(IndexError):
        store.rows([N])


def test_open_reads_by_row_group(store_path):
    assert pq.ParquetFile(store_path / "index.parquet").num_row_groups == 5
    store = LatentStore.open(str(store_path))
    assert store._index.aligned and store._index._table is None  # nothing read whole
    _check(store, store_path)
    assert store._index._table is None  # rows() and index_column() did not read it whole either


def test_index_out_of_position_order_is_read_whole(store_path, tmp_path):
    import shutil

    copy = tmp_path / "s.zarr"
    shutil.copytree(store_path, copy)
    table = pq.read_table(copy / "index.parquet")
    pq.write_table(table.take(np.arange(N)[::-1].copy()), copy / "index.parquet")
    store = LatentStore.open(str(copy))
    assert not store._index.aligned
    _check(store, copy)


def test_all_ok_store_has_no_positions_array_until_asked(tmp_path):
    write_synthetic_store(tmp_path / "s.zarr", count=20, latent_shape=(2, 2, 2), shard_size=8,
                          chunk_size=4)  # fmt: skip
    store = LatentStore.open(str(tmp_path / "s.zarr"))
    assert store._ok_positions is None and store.n_ok == 20
    assert store.ok_positions.tolist() == list(range(20))
