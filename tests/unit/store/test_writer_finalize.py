"""`StoreWriter.finalize` streams the index part by part, removes index_parts/ once the index is
whole, and a finalize interrupted at any step leaves a store that the next one completes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec.implementations.local
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lplkit.errors import StoreError
from lplkit.store import LatentStore, StoreWriter
from lplkit.store import format as fmt
from lplkit.store import index as idx
from lplkit.store.synthetic import write_synthetic_store
from lplkit.store.verify import repair_store, verify_store

COUNT, SHARD, GROUP = 100, 8, 24  # 13 shards (the last holds 4 rows); 24-row index row groups


@pytest.fixture(autouse=True)
def small_row_groups(monkeypatch):
    monkeypatch.setattr(idx, "ROW_GROUP", GROUP)


@pytest.fixture
def unfinished(tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    write_synthetic_store(path, count=COUNT, shard_size=SHARD, chunk_size=4,
                          skipped=[3, 50, 51], finalize=False)  # fmt: skip
    return path


def _parts(store: Path) -> pa.Table:
    """The oracle: every index part read by pyarrow and concatenated."""
    files = sorted((store / "index_parts").glob("shard-*.parquet"))
    assert len(files) == -(-COUNT // SHARD)
    return pa.concat_tables([pq.read_table(f) for f in files])


def _finalize(store: Path) -> dict:
    with StoreWriter.create_or_resume(str(store), fmt.read_manifest(str(store))) as w:
        return w.finalize()


def _check_finished(store: Path, oracle: pa.Table) -> None:
    got = pq.read_table(store / "index.parquet")
    assert got.to_pylist() == oracle.to_pylist()
    meta = pq.ParquetFile(store / "index.parquet").metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes == [GROUP] * (COUNT // GROUP) + [COUNT % GROUP]
    assert "DELTA_BINARY_PACKED" in meta.row_group(0).column(0).encodings  # position
    assert not (store / "index_parts").exists()
    manifest = fmt.read_manifest(str(store))
    assert manifest["completed"] and manifest["counts"] == {"total": COUNT, "ok": 97, "skipped": 3}
    assert verify_store(str(store)).ok
    assert LatentStore.open(str(store)).index.take(np.array([50]))["status"].to_pylist() == [
        "skipped"
    ]


def test_finalize_streams_the_parts_in_bounded_memory(unfinished, monkeypatch):
    oracle = _parts(unfinished)
    largest = []
    concat = pa.concat_tables

    def recording_concat(tables, *args, **kwargs):
        largest.append(sum(len(t) for t in tables))
        return concat(tables, *args, **kwargs)

    monkeypatch.setattr(pa, "concat_tables", recording_concat)
    _finalize(unfinished)
    monkeypatch.undo()
    # never more than one row group plus one part together (the old finalize concatenated all)
    assert largest and max(largest) < GROUP + SHARD
    _check_finished(unfinished, oracle)


def _raise_in_index_write(mp) -> None:
    write = idx.IndexWriter.write
    seen = []

    def failing(self, table):
        seen.append(1)
        if len(seen) == 5:
            raise KeyboardInterrupt  # what a kill looks like to the code after it: nothing runs
        write(self, table)

    mp.setattr(idx.IndexWriter, "write", failing)


def _raise_before_manifest(mp) -> None:
    import lplkit.store.writer as writer

    def failing(*args, **kwargs):
        raise KeyboardInterrupt

    mp.setattr(writer, "consolidate", failing)  # the index is written, the manifest is set


def _raise_while_removing_parts(mp) -> None:
    rm = fsspec.implementations.local.LocalFileSystem.rm

    def failing(self, path, *args, **kwargs):
        if not str(path).endswith("index_parts"):
            return rm(self, path, *args, **kwargs)
        for f in sorted(Path(path).glob("*.parquet"))[::2]:  # half of them gone
            f.unlink()
        raise KeyboardInterrupt

    mp.setattr(fsspec.implementations.local.LocalFileSystem, "rm", failing)


@pytest.mark.parametrize(
    "fault", [_raise_in_index_write, _raise_before_manifest, _raise_while_removing_parts]
)
def test_an_interrupted_finalize_is_completed_by_the_next(unfinished, monkeypatch, fault):
    oracle = _parts(unfinished)
    with monkeypatch.context() as mp:
        fault(mp)
        with pytest.raises(KeyboardInterrupt):
            _finalize(unfinished)
    assert not list(unfinished.rglob("*.tmp-*"))
    _finalize(unfinished)
    _check_finished(unfinished, oracle)


def test_an_old_store_with_index_parts_left_over_opens_and_verifies(unfinished):
    oracle = _parts(unfinished)
    saved = unfinished.parent / "parts"
    shutil.copytree(unfinished / "index_parts", saved)
    _finalize(unfinished)
    shutil.copytree(saved, unfinished / "index_parts")  # what a finalize before this one left
    assert verify_store(str(unfinished)).ok
    assert (
        LatentStore.open(str(unfinished)).index.column("key").to_pylist()
        == oracle.column("key").to_pylist()
    )
    part = unfinished / "index_parts" / "shard-00002.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    assert ("checksum", 2) in {(p.kind, p.shard) for p in verify_store(str(unfinished)).problems}
    shutil.rmtree(unfinished / "index_parts")
    shutil.copytree(saved, unfinished / "index_parts")
    _finalize(unfinished)  # the next encode run: nothing to write, the old parts are merged away
    _check_finished(unfinished, oracle)


def test_a_lost_index_marks_every_shard_for_re_encoding(unfinished):
    oracle = _parts(unfinished)
    _finalize(unfinished)
    index = unfinished / "index.parquet"
    index.write_bytes(index.read_bytes()[:100])
    report = verify_store(str(unfinished))
    assert {p.kind for p in report.problems} == {"index"}
    n = -(-COUNT // SHARD)
    assert report.bad_shards == list(range(n)) and "re-encod" in report.problems[0].fix
    with pytest.raises(StoreError, match="no index part"):
        _finalize_unfinished(unfinished)
    assert repair_store(str(unfinished), report) == list(range(n))
    write_synthetic_store(unfinished, count=COUNT, shard_size=SHARD, chunk_size=4,
                          skipped=[3, 50, 51])  # fmt: skip
    _check_finished(unfinished, oracle)


def _finalize_unfinished(store: Path) -> None:
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["lplkit"]["completed"] = False
    (store / "zarr.json").write_text(json.dumps(doc))
    _finalize(store)
