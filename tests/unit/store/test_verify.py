"""verify_store / repair_store: each kind of damage is caught, named by shard, and repairable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from lplkit.store import LatentStore
from lplkit.store.synthetic import write_synthetic_store
from lplkit.store.verify import repair_store, verify_store

COUNT, SHARD = 48, 16  # shards 0, 1, 2


@pytest.fixture
def store(damageable_store, tmp_path) -> Path:
    # Position 40 is skipped: shard 2 holds an all-zero chunk that zarr does not store.
    return damageable_store(
        tmp_path / "s.zarr",
        count=COUNT,
        shard_size=SHARD,
        chunk_size=4,
        flips=True,
        skipped=range(40, 44),
    )


def _kinds(report):
    return {(p.kind, p.shard) for p in report.problems}


def test_sound_store_passes_even_with_unstored_zero_chunks(store):
    report = verify_store(str(store))
    assert report.ok, report.problems
    assert report.complete_shards == report.n_shards == 3


def test_deleted_marker_is_a_missing_shard(store):
    (store / "progress" / "shard-00001.json").unlink()
    report = verify_store(str(store))
    assert _kinds(report) == {("missing_shard", 1)}
    assert not report.ok and report.bad_shards == []
    assert "lplkit encode" in report.problems[0].fix


def test_flipped_bytes_in_a_shard_file_are_caught(store):
    shard_file = store / "moments" / "c" / "1" / "0" / "0" / "0" / "0"
    data = bytearray(shard_file.read_bytes())
    for i in (100, 101, 2000):  # inside the (uncompressed) chunk data, not the shard index
        data[i] ^= 0xFF
    shard_file.write_bytes(bytes(data))
    report = verify_store(str(store))
    assert ("checksum", 1) in _kinds(report)
    assert report.bad_shards == [1]
    assert "--repair" in report.problems[0].fix


def test_garbled_shard_index_is_unreadable(store):
    shard_file = store / "moments_flip" / "c" / "2" / "0" / "0" / "0" / "0"
    shard_file.write_bytes(
        shard_file.read_bytes()[:-10]
    )  # truncated: the shard index is at the end
    report = verify_store(str(store))
    assert report.bad_shards == [2]
    assert {k for k, s in _kinds(report) if s == 2} & {"unreadable", "checksum"}


def test_nan_and_negative_std_are_caught(store):
    arr = zarr.open_group(str(store), mode="r+")["moments"]
    block = arr[0:16]
    block[3, 0, 1, 2, 2] = np.nan
    block[5, 1, 0, 0, 0] = -0.5
    arr[0:16] = block  # behind the writer's back: checksum mismatch as well
    kinds = _kinds(verify_store(str(store)))
    assert {("nonfinite", 0), ("negative_std", 0), ("checksum", 0)} <= kinds


def test_truncated_index_is_caught_and_reader_refuses(store):
    index = store / "index.parquet"
    index.write_bytes(index.read_bytes()[: len(index.read_bytes()) // 2])
    report = verify_store(str(store))
    assert [p.kind for p in report.problems] == ["index"]
    assert "rebuild" in report.problems[0].fix
    with pytest.raises(Exception, match="unreadable"):
        LatentStore.open(str(store))


def test_count_mismatch_between_manifest_and_index(store):
    group = zarr.open_group(str(store), mode="r+")
    manifest = dict(group.attrs["lplkit"])
    manifest["counts"] = dict(manifest["counts"], ok=manifest["counts"]["ok"] + 1)
    group.attrs["lplkit"] = manifest
    assert ("count", None) in _kinds(verify_store(str(store)))


def test_invalid_manifest(store):
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["lplkit"] = {"format_version": 1}
    report = verify_store(str(store))
    assert report.problems and {p.kind for p in report.problems} == {"manifest"}


def test_repair_then_rewrite_gives_a_sound_store_again(store):
    shard_file = store / "labels" / "c" / "1"
    data = bytearray(shard_file.read_bytes())
    data[10] ^= 0x01
    shard_file.write_bytes(bytes(data))
    report = verify_store(str(store))
    assert report.bad_shards == [1]
    assert repair_store(str(store), report) == [1]
    assert not (store / "progress" / "shard-00001.json").exists()
    assert not zarr.open_group(str(store), mode="r").attrs["lplkit"]["completed"]
    # What `lplkit encode` does on re-run: only shard 1 is pending; rewriting it + finalize fixes all.
    write_synthetic_store(
        store, count=COUNT, shard_size=SHARD, chunk_size=4, flips=True, skipped=range(40, 44)
    )
    assert verify_store(str(store)).ok


def test_verify_and_repair_work_on_fsspec_urls():
    import fsspec

    url = "memory://lplkit-verify/s.zarr"
    write_synthetic_store(url, count=20, shard_size=8, chunk_size=4)
    assert verify_store(url).ok
    fs = fsspec.filesystem("memory")
    fs.rm("/lplkit-verify/s.zarr/progress/shard-00002.json")
    report = verify_store(url)
    assert _kinds(report) == {("missing_shard", 2)}
    fs.pipe_file("/lplkit-verify/s.zarr/index.parquet", b"PAR1 truncated")
    assert ("index", None) in _kinds(verify_store(url))
