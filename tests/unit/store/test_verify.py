"""verify_store / repair_store: each kind of damage is caught, named by shard, and repairable."""

from __future__ import annotations

import math
import shutil
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


@pytest.fixture(scope="module")
def eight_shards(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("v8") / "s.zarr"
    write_synthetic_store(path, count=64, shard_size=8, chunk_size=4)
    return path


def _flip_moments_byte(store: Path, shard: int) -> None:
    path = store / "moments" / "c" / str(shard) / "0" / "0" / "0" / "0"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # inside the first chunk's payload (codec none)
    path.write_bytes(bytes(data))


def test_parallel_and_whole_sample_find_a_flipped_byte_like_serial(eight_shards, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(eight_shards, store)
    _flip_moments_byte(store, 5)
    (store / "progress" / "shard-00002.json").unlink()
    serial = verify_store(str(store))
    assert _kinds(serial) == {("checksum", 5), ("missing_shard", 2)}
    done = []
    parallel = verify_store(str(store), workers=2, progress=lambda d, t: done.append((d, t)))
    assert parallel.to_dict() == serial.to_dict()  # same problems, in the same order
    assert done == [(i, 7) for i in range(1, 8)]
    whole = verify_store(str(store), sample=1.0, seed=3)
    assert whole.problems == serial.problems and whole.bad_shards == [5]
    assert whole.sample == {"fraction": 1.0, "seed": 3, "checked": [0, 1, 3, 4, 5, 6, 7]}


def test_a_sample_reads_ceil_fraction_of_the_shards_drawn_from_the_seed(eight_shards, tmp_path):
    from lplkit.store.verify import sample_shards

    checked = verify_store(str(eight_shards), sample=0.5, seed=1).sample["checked"]
    # the draw, computed here from numpy directly
    expected = sorted(np.random.default_rng(1).choice(np.arange(8), 4, replace=False).tolist())
    assert checked == expected and len(checked) == math.ceil(0.5 * 8)
    assert verify_store(str(eight_shards), sample=0.5, seed=1).sample["checked"] == checked
    assert len(sample_shards(list(range(8)), 0.1, 0)) == 1  # ceil(0.8)
    draws = {tuple(sample_shards(list(range(8)), 0.5, s)) for s in range(5)}
    assert len(draws) > 1  # the seed matters
    store = tmp_path / "s.zarr"
    shutil.copytree(eight_shards, store)
    outside = min(set(range(8)) - set(checked))
    _flip_moments_byte(store, outside)
    assert verify_store(str(store), sample=0.5, seed=1).ok  # not in the sample: not found
    _flip_moments_byte(store, outside)  # undone
    _flip_moments_byte(store, checked[0])
    assert verify_store(str(store), sample=0.5, seed=1).bad_shards == [checked[0]]


def test_labels_that_differ_from_the_index_are_found_by_full_and_quick_checks(store):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = store / "index.parquet"
    table = pq.read_table(path)
    labels = table.column("label").to_numpy().copy()
    labels[20] += 1  # position 20: shard 1
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    pq.write_table(table, path)
    assert _kinds(verify_store(str(store))) == {("labels", 1)}
    assert _kinds(verify_store(str(store), workers=2)) == {("labels", 1)}
    assert _kinds(verify_store(str(store), read_data=False)) == {("labels", 1)}
