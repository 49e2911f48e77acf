"""Layout 3: shards sized in bytes (`format.store_geometry`, issue #27 item 2), checked by hand and
against the same rows written with row-sized shards (layout 2)."""

from __future__ import annotations

import numpy as np
from helpers.layouts import (
    BYTES_GEOMETRY,
    SHAPE,
    SKIPPED,
    N,
    as_layout_2,
    assert_same_arrays,
    assert_same_reads,
    oracle,
    raw_arrays,
    read_all,
    write_test_store,
)

from lplkit.store import LatentStore
from lplkit.store import format as fmt
from lplkit.store.synthetic import stream_synthetic_store
from lplkit.store.verify import verify_store

# -- geometry --------------------------------------------------------------------------------------


def test_geometry_in_bytes_by_hand():
    # 4x8x8 fp16, no flips: moments row 1024 B, row 1028 B; chunk 64 rows (1 MiB would be 1024);
    # 128 MiB // 1028 = 130561 rows -> 2040 whole chunks = 130560 rows
    g = fmt.store_geometry((4, 8, 8), "float16", False, 4_000_000)
    assert (g["shard_size"], g["chunk_size"]) == (130560, 64)
    assert g["geometry"] == {"rule": "bytes", "shard_mb": 128.0, "chunk_bytes": 1 << 20,
                             "row_bytes": 1028}  # fmt: skip
    # ImageNet 512 px with flips: 4x64x64 fp16, moments row 65536 B, row 131076 B; chunk 16 rows;
    # 134217728 // 131076 = 1023 rows -> 63 chunks = 1008 rows
    g = fmt.store_geometry((4, 64, 64), "float16", True, 1_281_167)
    assert (g["shard_size"], g["chunk_size"]) == (1008, 16)
    # bfloat16 is stored as uint16: the same bytes as float16; float32 twice
    assert fmt.row_bytes((4, 32, 32), "bfloat16", False) == 2 * 4096 * 2 + 4
    assert fmt.row_bytes((4, 32, 32), "float32", True) == 2 * (2 * 4096 * 4) + 4
    # a small store: one shard of the chunks covering it; smaller than a chunk: one chunk of its rows
    g = fmt.store_geometry((4, 8, 8), "float16", False, 200)
    assert (g["shard_size"], g["chunk_size"]) == (256, 64)
    g = fmt.store_geometry((4, 8, 8), "float16", False, 40)
    assert (g["shard_size"], g["chunk_size"]) == (40, 40)
    # rows given: they win over MiB; the chunk (1 MiB = 64 rows at 4x32x32) divides them
    g = fmt.store_geometry((4, 32, 32), "float16", False, 10_000, shard_mb=1, shard_size=1000)
    assert (g["shard_size"], g["chunk_size"], g["geometry"]["rule"]) == (1000, 50, "rows")
    # the test stores' geometry (see BYTES_GEOMETRY)
    g = fmt.store_geometry(SHAPE, "float16", True, N, shard_mb=0.03, chunk_bytes=5 * 1024)
    assert (g["shard_size"], g["chunk_size"]) == (15, 5)


def test_array_geometry_of_an_added_array_shares_the_shards():
    m = {"shard_size": 130560, "geometry": {"chunk_bytes": 1 << 20}}
    # 77x768 fp16 text embeddings: 118272 B a row -> 8 rows a chunk (1 MiB // 118272), dividing
    assert fmt.array_geometry(m, 77 * 768 * 2) == (130560, 8)
    assert fmt.array_geometry(m, 4) == (130560, 64)  # small rows: 64-row chunks
    assert fmt.array_geometry({"shard_size": 1000}, 100_000) == (1000, 10)  # layout 2: no geometry


def test_manifest_records_layout_3_and_passes_the_schema(tmp_path):
    stream_synthetic_store(tmp_path / "s.zarr", count=10, flips=True, shard_mb=0.01)
    m = fmt.read_manifest(str(tmp_path / "s.zarr"))
    assert m["layout_version"] == 3 == fmt.LAYOUT_VERSION
    assert m["geometry"]["rule"] == "bytes" and m["geometry"]["shard_mb"] == 0.01
    assert fmt.manifest_problems(m) == []
    assert fmt.manifest_problems({**m, "geometry": {"rule": "tiles", "row_bytes": 4}}) != []


# -- byte-sized shards read back like row-sized ones ------------------------------------------------


def test_byte_sized_store_reads_back_bitwise_equal_to_row_sized(tmp_path):
    rows_url, bytes_url = tmp_path / "rows.zarr", tmp_path / "bytes.zarr"
    written = write_test_store(rows_url, shard_size=32, chunk_size=8)
    as_layout_2(rows_url)
    again = write_test_store(bytes_url, shard_size=None, chunk_size=None, **BYTES_GEOMETRY)
    m = LatentStore.open(str(bytes_url)).manifest
    assert (m["shard_size"], m["chunk_size"], m["layout_version"]) == (15, 5, 3)
    np.testing.assert_array_equal(written["moments"], again["moments"])  # same input

    assert_same_arrays(raw_arrays(bytes_url), raw_arrays(rows_url))
    assert_same_arrays(raw_arrays(bytes_url), oracle(written))
    by_bytes = read_all(bytes_url)
    assert_same_reads(by_bytes, read_all(rows_url))
    assert by_bytes["caption"][7] == "caption 7" and by_bytes["key"][96] == "img_000096"
    assert [by_bytes["status"][p] for p in SKIPPED] == ["skipped"] * 3
    assert verify_store(str(bytes_url)).ok
