"""The Parquet index: one row per position (schema mirrored in schemas/index.schema.json).

`crop_box` is a *variable-size* `list<int32>` holding exactly 4 values or null (checked on write).
Format 1 stores written before this used `fixed_size_list<int32>[4]`, whose null entries older pyarrow
releases cannot read back from a file a newer one wrote ("Expected all lists to be of size=4 but
index 1 had size=0"); readers cast such tables to the current schema (`conform`), so old and new
index parts concatenate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

INDEX_SCHEMA = pa.schema(
    [
        pa.field("position", pa.int64(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("orig_width", pa.int32()),
        pa.field("orig_height", pa.int32()),
        pa.field("crop_box", pa.list_(pa.int32())),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
    ]
)
STATUSES = ("ok", "skipped")


def rows_to_table(rows: Sequence[dict[str, Any]], start: int, labels: np.ndarray) -> pa.Table:
    """Validate a shard's rows (positions start.., labels matching the labels array) into a table."""
    if len(rows) != len(labels):
        raise ValueError(f"{len(rows)} index rows for {len(labels)} samples")
    cols: dict[str, list[Any]] = {f.name: [] for f in INDEX_SCHEMA}
    for i, row in enumerate(rows):
        pos = int(row.get("position", start + i))
        if pos != start + i:
            raise ValueError(f"index row {i} has position {pos}, expected {start + i}")
        status = row.get("status", "ok")
        if status not in STATUSES:
            raise ValueError(f"index row {pos}: status {status!r} not in {STATUSES}")
        label = int(row.get("label", labels[i]))
        if label != int(labels[i]):
            raise ValueError(f"index row {pos}: label {label} but labels array has {labels[i]}")
        box = row.get("crop_box")
        if box is not None and len(box) != 4:
            raise ValueError(f"index row {pos}: crop_box {box!r} is not (left, top, right, bottom)")
        cols["position"].append(pos)
        cols["key"].append(str(row["key"]))
        cols["label"].append(label)
        cols["caption"].append(row.get("caption"))
        cols["orig_width"].append(row.get("orig_width"))
        cols["orig_height"].append(row.get("orig_height"))
        cols["crop_box"].append(None if box is None else [int(v) for v in box])
        cols["status"].append(status)
        cols["reason"].append(row.get("reason"))
    return pa.table(cols, schema=INDEX_SCHEMA)


def ok_mask(table: pa.Table) -> np.ndarray:
    """Boolean numpy mask of the rows whose status is "ok"."""
    if len(table) == 0:
        return np.zeros(0, dtype=bool)
    return pc.equal(table.column("status"), "ok").to_numpy()


def table_to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def conform(table: pa.Table) -> pa.Table:
    """Cast a table read from disk to `INDEX_SCHEMA` (old stores: fixed-size crop_box lists).

    Raises `ValueError` when the columns are not the index's (a foreign or damaged file).
    """
    if table.schema.equals(INDEX_SCHEMA):
        return table
    if table.schema.names != INDEX_SCHEMA.names:
        raise ValueError(f"index columns {table.schema.names} are not {INDEX_SCHEMA.names}")
    try:
        return table.cast(INDEX_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"index column types do not match the index schema: {exc}") from None


def read_table(fs: Any, path: str) -> pa.Table:
    """Read an index (or index part) Parquet file as `INDEX_SCHEMA`; raises on missing/truncated
    files (OSError/ArrowException) and on foreign columns (ValueError)."""
    with fs.open(path, "rb") as f:
        return conform(pq.read_table(f))


def read_bytes(fs: Any, path: str) -> bytes:
    with fs.open(path, "rb") as f:
        return f.read()


def table_from_bytes(data: bytes) -> pa.Table:
    return conform(pq.read_table(pa.BufferReader(data)))
