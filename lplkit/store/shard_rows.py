"""Single rows of an uncompressed store read straight from its zarr shard files (`os.pread`).

zarr reads and decodes a whole inner chunk (64 rows) for one row, ~0.5 ms: random access one sample
at a time (``LatentDataset`` above ``memory_budget``) then runs at a few hundred samples a second.
A store written with ``codec="none"`` (the default) keeps every inner chunk as the raw C-order bytes
of ``(chunk, 2, C, h, w)`` in its shard file, located by the shard index the zarr v3 sharding codec
writes at the end of the file: per inner chunk ``(offset, nbytes)`` as little-endian uint64 (both
``2**64 - 1`` for a chunk never stored: all fill value, zeros here), then a crc32c of the index.
A row is then one ``pread`` of ``2*C*h*w*itemsize`` bytes at ``offset + row * that``, through the
OS page cache, which every process (DataLoader workers included) shares: nothing is copied per
worker, and the memory is bounded by the kernel, not by the loader.

Used only for local files whose array metadata is exactly that layout (`ShardRows.for_array`
returns None otherwise, and the reader keeps zarr). The shard index's crc32c is not re-checked
here: `lplkit verify` checks the stored data against the completion markers' sha256.
"""

from __future__ import annotations

import os
import resource
from collections import OrderedDict
from typing import Any

import numpy as np

from lplkit.store.sidecar import is_local

_EMPTY = np.uint64(2**64 - 1)


def _max_open() -> int:
    """Shard files kept open per array and process: a random row of a store of many shards would
    otherwise reopen its file nearly every time (an `open` costs more than the row's pread). An
    eighth of the descriptor limit (a store has one reader per array; workers have their own)."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (OSError, ValueError):
        return 64
    limit = 1 << 20 if soft == resource.RLIM_INFINITY else soft
    return max(64, min(4096, limit // 8))


_MAX_OPEN = _max_open()


def _is_raw_little(codecs: Any) -> bool:
    return (
        isinstance(codecs, list | tuple)
        and len(codecs) == 1
        and codecs[0].get("name") == "bytes"
        and (codecs[0].get("configuration") or {}).get("endian", "little") == "little"
    )


class ShardRows:
    """Reads rows of one sharded, uncompressed array by position (see the module docstring)."""

    def __init__(self, root: str, name: str, shape: tuple[int, ...], shard_rows: int,
                 chunk_rows: int, dtype: np.dtype) -> None:  # fmt: skip
        self.dir = f"{root}/{name}/c"
        self.row_shape = tuple(shape[1:])
        self.count = int(shape[0])
        self.shard_rows, self.chunk_rows = int(shard_rows), int(chunk_rows)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.inner = self.shard_rows // self.chunk_rows
        self._suffix = "/0" * len(self.row_shape)
        self._index: dict[int, np.ndarray] = {}  # shard -> (inner, 2) uint64 offsets, nbytes
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()

    @classmethod
    def for_array(cls, fs: Any, root: str, name: str, metadata: dict[str, Any]) -> ShardRows | None:
        """A reader for the array `name` when it is local and stored raw in the layout above."""
        if not is_local(fs):
            return None
        shape = tuple(int(v) for v in metadata.get("shape", ()))
        codecs = metadata.get("codecs") or []
        grid = (metadata.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape")
        key = metadata.get("chunk_key_encoding") or {}
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed" or not shape or not grid:
            return None
        conf = codecs[0].get("configuration") or {}
        inner = conf.get("chunk_shape") or []
        index_codecs = conf.get("index_codecs") or []
        if not (
            _is_raw_little(conf.get("codecs"))
            and conf.get("index_location", "end") == "end"
            and _is_raw_little(index_codecs[:1])
            and [c.get("name") for c in index_codecs[1:]] == ["crc32c"]
            and key.get("name") == "default"
            and (key.get("configuration") or {}).get("separator", "/") == "/"
            and tuple(grid[1:]) == shape[1:] == tuple(inner[1:])
            and grid[0] % inner[0] == 0
            and metadata.get("fill_value") in (0, 0.0)
        ):
            return None
        try:
            dtype = np.dtype(str(metadata["data_type"]))
        except TypeError:
            return None
        return cls(root, name, shape, int(grid[0]), int(inner[0]), dtype)

    def _fd(self, shard: int) -> int | None:
        if self._pid != os.getpid():  # a forked worker: its own descriptors and cache
            self._fds, self._pid = OrderedDict(), os.getpid()
        fd = self._fds.get(shard)
        if fd is not None:
            self._fds.move_to_end(shard)
            return fd
        try:
            fd = os.open(f"{self.dir}/{shard}{self._suffix}", os.O_RDONLY)
        except FileNotFoundError:  # an all-zero shard is never stored
            return None
        self._fds[shard] = fd
        if len(self._fds) > _MAX_OPEN:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _chunk_table(self, shard: int, fd: int) -> np.ndarray:
        table = self._index.get(shard)
        if table is None:
            size = os.fstat(fd).st_size
            nbytes = self.inner * 16
            raw = os.pread(fd, nbytes, size - nbytes - 4)
            if len(raw) != nbytes:
                raise OSError(f"{self.dir}/{shard}: shard file shorter than its index")
            table = np.frombuffer(raw, dtype="<u8").reshape(self.inner, 2)
            full = self.chunk_rows * self.row_bytes
            stored = table[:, 0] != _EMPTY
            if (table[stored, 1] != full).any() or (table[stored, 0] + full > size).any():
                raise OSError(f"{self.dir}/{shard}: shard index does not match the array layout")
            self._index[shard] = table
        return table

    def read(self, positions: np.ndarray, out: np.ndarray) -> None:
        """Rows `positions` into `out` (len(positions), *row_shape) of the stored dtype."""
        for i, p in enumerate(np.asarray(positions, dtype=np.int64).tolist()):
            shard, rest = divmod(p, self.shard_rows)
            chunk, row = divmod(rest, self.chunk_rows)
            fd = self._fd(shard)
            offset = _EMPTY if fd is None else self._chunk_table(shard, fd)[chunk, 0]
            if fd is None or offset == _EMPTY:
                out[i] = 0
                continue
            data = os.pread(fd, self.row_bytes, int(offset) + row * self.row_bytes)
            if len(data) != self.row_bytes:
                raise OSError(f"{self.dir}/{shard}: short read")
            out[i] = np.frombuffer(data, dtype=self.dtype).reshape(self.row_shape)

    def row(self, position: int) -> np.ndarray | None:
        """One row as a fresh array of the stored dtype (None: a chunk never stored, all zeros).
        The per-item path of `LatentDataset`: no batch bookkeeping around the one pread."""
        shard, rest = divmod(int(position), self.shard_rows)
        chunk, row = divmod(rest, self.chunk_rows)
        fd = self._fd(shard)
        offset = _EMPTY if fd is None else self._chunk_table(shard, fd)[chunk, 0]
        if fd is None or offset == _EMPTY:
            return None
        data = os.pread(fd, self.row_bytes, int(offset) + row * self.row_bytes)
        if len(data) != self.row_bytes:
            raise OSError(f"{self.dir}/{shard}: short read")
        return np.frombuffer(bytearray(data), dtype=self.dtype).reshape(self.row_shape)

    def read_chunks(self, chunks: np.ndarray, out: np.ndarray) -> None:
        """Whole inner chunks `chunks` into `out` (len(chunks) * chunk_rows, *row_shape): one
        pread each (a partial last chunk is stored padded to full size)."""
        size = self.chunk_rows * self.row_bytes
        flat = out.reshape(len(chunks), size // self.dtype.itemsize)
        per_shard = self.shard_rows // self.chunk_rows
        for i, c in enumerate(np.asarray(chunks, dtype=np.int64).tolist()):
            shard, inner = divmod(c, per_shard)
            fd = self._fd(shard)
            offset = _EMPTY if fd is None else self._chunk_table(shard, fd)[inner, 0]
            if fd is None or offset == _EMPTY:
                flat[i] = 0
                continue
            data = os.pread(fd, size, int(offset))
            if len(data) != size:
                raise OSError(f"{self.dir}/{shard}: short read")
            flat[i] = np.frombuffer(data, dtype=self.dtype)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"], state["_index"] = OrderedDict(), {}  # descriptors are per process
        return state

    def close(self) -> None:
        """Close this process's descriptors (a forked child's inherited ones are its parent's)."""
        if self._pid == os.getpid():
            while self._fds:
                os.close(self._fds.popitem()[1])
        self._fds = OrderedDict()

    def __del__(self) -> None:
        try:  # noqa: SIM105 (contextlib may already be torn down at interpreter exit)
            self.close()
        except (OSError, AttributeError, TypeError):  # closed already; or interpreter teardown
            pass
