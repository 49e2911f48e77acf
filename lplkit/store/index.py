"""The Parquet index: one row per position (schema mirrored in schemas/index.schema.json).

`crop_box` is a *variable-size* `list<int32>` holding exactly 4 values or null (checked on write).
Format 1 stores written before this used `fixed_size_list<int32>[4]`, whose null entries older pyarrow
releases cannot read back from a file a newer one wrote ("Expected all lists to be of size=4 but
index 1 had size=0"); readers cast such tables to the current schema (`conform`), so old and new
index parts concatenate.
"""

from __future__ import annotations

import contextlib
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
#: The index.parquet of a bucketed store (lplkit.store.buckets): the same columns plus the bucket
#: of each row (rows grouped by bucket; each bucket's own index is `INDEX_SCHEMA`).
BUCKET_COLUMN = "bucket"
BUCKETED_INDEX_SCHEMA = INDEX_SCHEMA.append(pa.field(BUCKET_COLUMN, pa.int16(), nullable=False))


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


#: Rows per Parquet row group of index.parquet: the unit `IndexFile` reads keys and captions in.
ROW_GROUP = 1 << 16


def _parquet_options(names: Sequence[str]) -> dict[str, Any]:
    # position is 0..n-1 in a finalized index: delta-encoded it costs bytes, so readers can check
    # the row = position alignment cheaply (`IndexFile`). Page checksums let `verify` find bit rot.
    return {
        "compression": "zstd",
        "use_dictionary": [n for n in names if n != "position"],
        "column_encoding": {"position": "DELTA_BINARY_PACKED"},
        "write_page_checksum": True,
    }


def table_to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=ROW_GROUP, **_parquet_options(table.schema.names))
    return sink.getvalue().to_pybytes()


class IndexWriter:
    """Writes an index into one Parquet file table by table, in `ROW_GROUP`-row groups, holding
    at most one row group plus the table being added (finalize streams the shards' parts through
    it instead of concatenating them all in memory). The file equals `table_to_bytes` of the
    concatenated tables in content, row groups and encodings."""

    def __init__(self, sink: Any, schema: pa.Schema = INDEX_SCHEMA) -> None:
        self._writer = pq.ParquetWriter(sink, schema, **_parquet_options(schema.names))
        self.schema = schema
        self._pending: list[pa.Table] = []
        self._rows = 0
        self.rows = 0  # written so far

    def write(self, table: pa.Table) -> None:
        self._pending.append(conform(table, self.schema))
        self._rows += len(table)
        while self._rows >= ROW_GROUP:
            self._flush(ROW_GROUP)

    def _flush(self, n: int) -> None:
        t = pa.concat_tables(self._pending)
        self._writer.write_table(t.slice(0, n), row_group_size=ROW_GROUP)
        rest = t.slice(n)
        self._pending, self._rows = [rest.combine_chunks()] if len(rest) else [], len(rest)
        self.rows += n

    def close(self) -> None:
        if self._rows:
            self._flush(self._rows)
        self._writer.close()

    def abort(self) -> None:
        """Close after a failure (the caller discards the file): no footer error from `__del__`."""
        self._pending, self._rows = [], 0
        with contextlib.suppress(Exception):
            self._writer.close()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def schema_of(names: Sequence[str]) -> pa.Schema:
    """The index schema with these column names: `INDEX_SCHEMA`, or `BUCKETED_INDEX_SCHEMA` (a
    bucketed store's global index); `ValueError` for other columns (a foreign or damaged file)."""
    for schema in (INDEX_SCHEMA, BUCKETED_INDEX_SCHEMA):
        if list(names) == schema.names:
            return schema
    raise ValueError(f"index columns {list(names)} are not {INDEX_SCHEMA.names}")


def conform(table: pa.Table, schema: pa.Schema | None = None) -> pa.Table:
    """Cast a table read from disk to the index schema of its columns (`schema_of`; old stores:
    fixed-size crop_box lists), or to `schema` when given.

    Raises `ValueError` when the columns are not the index's (a foreign or damaged file).
    """
    if schema is None:
        schema = schema_of(table.schema.names)
    if table.schema.equals(schema):
        return table
    if table.schema.names != schema.names:
        raise ValueError(f"index columns {table.schema.names} are not {schema.names}")
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise ValueError(f"index column types do not match the index schema: {exc}") from None


def read_table(fs: Any, path: str, *, check_pages: bool = False) -> pa.Table:
    """Read an index (or index part) Parquet file as `INDEX_SCHEMA`; raises on missing/truncated
    files (OSError/ArrowException) and on foreign columns (ValueError). `check_pages`: verify the
    pages' CRC32 checksums (files written since they carry them; bit rot raises OSError)."""
    with fs.open(path, "rb") as f:
        return conform(pq.read_table(f, page_checksum_verification=check_pages))


def read_bytes(fs: Any, path: str) -> bytes:
    with fs.open(path, "rb") as f:
        return f.read()


def table_from_bytes(data: bytes) -> pa.Table:
    return conform(pq.read_table(pa.BufferReader(data)))


class IndexFile:
    """An index read by column and row group instead of whole (`LatentStore`'s view of it).

    `open` reads only the `label` and `status` columns (status dictionary-encoded: a few bytes a
    row, freed after), so opening costs ~4 bytes of resident memory a row (the labels). Keys,
    captions and the other columns are read on demand: `take(positions)` reads only the row groups
    holding them; `column(name)` one column whole, aligned to positions.

    A finalized index has row `p` = position `p` (finalize checks it); that is confirmed from the
    position column's per-row-group statistics without reading the column. An index that is not so
    aligned (an unfinished store's parts, or statistics missing) is read whole instead, as before.
    """

    def __init__(self, count: int, *, fs: Any = None, path: str | None = None,
                 table: pa.Table | None = None) -> None:  # fmt: skip
        self.count = int(count)
        self.schema = INDEX_SCHEMA if table is None else schema_of(table.schema.names)
        self.fs, self.path = fs, str(path)
        self._table = table
        self._starts = np.zeros(1, dtype=np.int64)  # row-group row offsets (+ total), file only
        self.aligned = False
        self._group: tuple[int, pa.Table] | None = None  # `rows`' last row group
        if table is None:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                meta = pf.metadata
                self.schema = schema_of(pf.schema_arrow.names)
                sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
                self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
                self.aligned = int(self._starts[-1]) == self.count and _positions_are_rows(pf)
        if not self.aligned:
            self._table = self.table()

    def _read(self, columns: list[str], row_groups: list[int] | None = None, **kw: Any) -> pa.Table:
        # Opened per read, never kept: a forked DataLoader worker must not share a file offset.
        with self.fs.open(self.path, "rb") as f:
            pf = pq.ParquetFile(f, **kw)
            if row_groups is None:
                return pf.read(columns=columns)
            return pf.read_row_groups(row_groups, columns=columns)

    def table(self) -> pa.Table:
        """The whole index (read once, then kept)."""
        if self._table is None:
            self._table = read_table(self.fs, self.path)
        return self._table

    def labels_and_ok(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels int32 `(count,)` by position, -1 where no row; sorted ok positions, or None when
        every position is ok)."""
        if not self.aligned:
            t = self.table()
            pos = t.column("position").to_numpy() if len(t) else np.zeros(0, np.int64)
            labels = np.full(self.count, -1, dtype=np.int32)
            labels[pos] = t.column("label").to_numpy()
            return labels, np.sort(pos[ok_mask(t)]).astype(np.int64)
        t = self._read(["label", "status"], read_dictionary=["status"])
        labels = _numpy(t.column("label")).astype(np.int32, copy=False)
        status = t.column("status")
        ok = np.ones(self.count, dtype=bool)
        row = 0
        for chunk in status.chunks:  # dictionary indices compared to the index of "ok", per chunk
            codes = _chunk_numpy(chunk.indices)
            names = chunk.dictionary.to_pylist()
            ok[row : row + len(codes)] = codes == (names.index("ok") if "ok" in names else -1)
            row += len(codes)
        return labels, None if ok.all() else np.flatnonzero(ok).astype(np.int64)

    def rows(self, start: int, stop: int) -> pa.Table:
        """Rows of positions `[start, stop)` of an aligned index, read by row group; the last group
        read is kept, so consecutive ranges (finalize, shard by shard) read each group once."""
        if not self.aligned:
            raise ValueError("the index rows are not aligned to positions")
        first, last = np.searchsorted(self._starts, [start, stop - 1], side="right") - 1
        pieces = []
        for g in range(int(first), int(last) + 1):
            if self._group is None or self._group[0] != g:
                self._group = (g, conform(self._read(self.schema.names, [g])))
            lo, hi = max(start, self._starts[g]), min(stop, self._starts[g + 1])
            pieces.append(self._group[1].slice(lo - self._starts[g], hi - lo))
        return pa.concat_tables(pieces) if pieces else self.schema.empty_table()

    def take(self, positions: np.ndarray) -> pa.Table:
        """The rows of `positions` (in that order); IndexError for a position without a row."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if not self.aligned:
            t = self.table()
            column = t.column("position").to_numpy() if len(t) else np.zeros(0, np.int64)
            order = np.argsort(column)
            found = np.minimum(np.searchsorted(column[order], pos), max(len(column) - 1, 0))
            if len(pos) and (not len(column) or (column[order][found] != pos).any()):
                raise IndexError("positions without an index row")
            return t.take(order[found])
        if len(pos) and (pos.min() < 0 or pos.max() >= self.count):
            raise IndexError("positions without an index row")
        groups = np.unique(np.searchsorted(self._starts, pos, side="right") - 1)
        if not len(groups):
            return self.schema.empty_table()
        t = conform(self._read(self.schema.names, [int(g) for g in groups]))
        # rows of the groups read, renumbered: group g's rows follow each other in `t`
        offset = np.zeros(len(self._starts) - 1, dtype=np.int64)
        sizes = np.diff(self._starts)[groups]
        offset[groups] = np.concatenate([[0], np.cumsum(sizes)[:-1]]) - self._starts[groups]
        g_of = np.searchsorted(self._starts, pos, side="right") - 1
        return t.take(pa.array(pos + offset[g_of]))

    def column(self, name: str) -> pa.Array:
        """Column `name` aligned to positions (entry `p` = position `p`; null where no row)."""
        if self.aligned:
            return self._read([name]).column(name).combine_chunks()
        t = self.table()
        row_of = np.full(self.count, -1, dtype=np.int64)
        row_of[t.column("position").to_numpy()] = np.arange(len(t))
        mask = row_of < 0
        return t.column(name).combine_chunks().take(pa.array(np.where(mask, 0, row_of), mask=mask))


def _chunk_numpy(chunk: pa.Array) -> np.ndarray:
    """A null-free integer Arrow array viewed as numpy (no copy). Not `to_numpy()`: pyarrow
    imports pandas for it, which alone can cost more than the whole open."""
    if chunk.null_count:
        raise ValueError(f"unexpected nulls in an index column of type {chunk.type}")
    dtype = np.dtype(str(chunk.type))
    return np.frombuffer(
        chunk.buffers()[1], dtype=dtype, count=len(chunk), offset=chunk.offset * dtype.itemsize
    )


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A null-free integer column as one numpy array (chunk by chunk, see `_chunk_numpy`)."""
    chunks = [_chunk_numpy(c) for c in column.chunks]
    return np.concatenate(chunks) if len(chunks) != 1 else chunks[0].copy()


def _positions_are_rows(pf: pq.ParquetFile) -> bool:
    """Whether row `r` holds position `r` (checked one row group at a time: the position column
    is delta-encoded by the writer, a few bytes per row group to read)."""
    row = 0
    for i in range(pf.metadata.num_row_groups):
        for chunk in pf.read_row_group(i, columns=["position"]).column(0).chunks:
            got = _chunk_numpy(chunk)
            if not np.array_equal(got, np.arange(row, row + len(got))):
                return False
            row += len(got)
    return True
