"""The Parquet index is portable: `crop_box` is a variable-size list, null for skipped rows.

A `fixed_size_list<int32>[4]` column with null entries written by pyarrow 26 fails to read on pyarrow 25
(`ArrowInvalid: Expected all lists to be of size=4 but index 1 had size=0`, seen in
`StoreWriter.finalize`). The file must therefore declare a plain `list<int32>`; old stores' fixed-size
parts must still read and concatenate with new ones.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lplkit.store import StoreWriter, new_manifest
from lplkit.store import index as idx
from lplkit.store.synthetic import synthetic_moments

N = 6
BOXES = {0: [1, 2, 9, 10], 2: [0, 0, 8, 8], 3: [3, 1, 11, 9], 5: [2, 2, 10, 10]}  # 1, 4 skipped


def _write(path, rows_for) -> None:
    manifest = new_manifest(
        autoencoder={"id": "synthetic", "config_hash": "0"},
        resolution=8,
        latent_shape=(2, 2, 2),
        source={"id": "t", "split": None, "revision": None, "count": N},
        dtype="float32",
        shard_size=4,
        chunk_size=2,
    )
    moments = synthetic_moments(N, (2, 2, 2))
    with StoreWriter.create_or_resume(str(path), manifest) as w:
        for s in w.pending_shards():
            lo, hi = w.shard_range(s)
            w.write_shard(s, moments[lo:hi], None, np.zeros(hi - lo, np.int32), rows_for(lo, hi))
        w.finalize()


def _rows(lo: int, hi: int) -> list[dict]:
    return [
        {"key": f"k{p}", "label": 0, "crop_box": BOXES.get(p), "status": "ok" if p in BOXES else "skipped",
         "reason": None if p in BOXES else "test skip"}
        for p in range(lo, hi)
    ]  # fmt: skip


def test_null_crop_boxes_round_trip_as_a_variable_size_list(tmp_path):
    _write(tmp_path / "s.zarr", _rows)
    path = tmp_path / "s.zarr" / "index.parquet"
    # The Arrow schema embedded in the file is what an older pyarrow rebuilds the column from.
    assert pq.read_schema(path).field("crop_box").type == pa.list_(pa.int32())
    for part in sorted((tmp_path / "s.zarr" / "index_parts").glob("*.parquet")):
        assert pq.read_schema(part).field("crop_box").type == pa.list_(pa.int32())
    rows = pq.read_table(path).to_pylist()
    assert [r["crop_box"] for r in rows] == [BOXES.get(p) for p in range(N)]
    assert [r["status"] for r in rows] == ["ok", "skipped", "ok", "ok", "skipped", "ok"]


def test_crop_box_of_the_wrong_length_is_refused(tmp_path):
    def bad(lo: int, hi: int) -> list[dict]:
        return [dict(r, crop_box=[1, 2, 3]) if r["crop_box"] else r for r in _rows(lo, hi)]

    with pytest.raises(ValueError, match="crop_box"):
        _write(tmp_path / "s.zarr", bad)


def test_old_fixed_size_parts_still_read_and_concatenate(tmp_path):
    import fsspec

    old_schema = pa.schema(
        [f if f.name != "crop_box" else pa.field("crop_box", pa.list_(pa.int32(), 4))
         for f in idx.INDEX_SCHEMA]
    )  # fmt: skip
    cols = {
        "position": [0, 1], "key": ["a", "b"], "label": [0, 0], "caption": [None, None],
        "orig_width": [10, None], "orig_height": [10, None], "crop_box": [[0, 0, 8, 8], None],
        "status": ["ok", "skipped"], "reason": [None, "bad"],
    }  # fmt: skip
    pq.write_table(pa.table(cols, schema=old_schema), tmp_path / "old.parquet")
    old = idx.read_table(fsspec.filesystem("file"), str(tmp_path / "old.parquet"))
    assert old.schema.equals(idx.INDEX_SCHEMA)
    new = idx.rows_to_table(
        [{"key": "c", "label": 0, "crop_box": [1, 1, 9, 9]}], 2, np.zeros(1, np.int32)
    )
    both = pa.concat_tables([old, new]).to_pylist()
    assert [r["crop_box"] for r in both] == [[0, 0, 8, 8], None, [1, 1, 9, 9]]


def test_a_foreign_parquet_file_is_not_taken_for_an_index(tmp_path):
    import fsspec

    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="index columns"):
        idx.read_table(fsspec.filesystem("file"), str(tmp_path / "x.parquet"))
