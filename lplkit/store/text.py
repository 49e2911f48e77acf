"""Cached text-encoder outputs in a latent store: layout, `TextWriter` and row reads.

Per encoder `name` (manifest `text_encoders[name]`), next to the latents::

    text/<name>/states        (N, L, D)  per-token hidden states, stored dtype (fp16/bf16 bits/fp32)
    text/<name>/mask          (N, L)     uint8 tokenizer attention mask (1 = token, 0 = padding)
    text/<name>/pooled        (N, P)     pooled / projected embedding (CLIP only)
    text/<name>/empty_states  (1, L, D)  the empty caption "" (classifier-free-guidance dropout)
    text/<name>/empty_mask    (1, L)
    text/<name>/empty_pooled  (1, P)
    text/<name>/progress/shard-00042.json   completion marker (as the moments' markers)

Row `i` is position `i` of the store (its caption in index.parquet); skipped positions hold zeros
(an all-zero mask). The rows per zarr shard and per inner chunk are read from the store's
`moments` array, never recomputed, so text shard `s` covers the same positions as moment shard `s`
and is written, checksummed and resumed the same way (`progress/` under `text/<name>/`).
"""

from __future__ import annotations

import copy
import re
import time
from typing import Any, cast

import numpy as np
import zarr

from lplkit.errors import StoreCorruptError, StoreError, StoreMismatchError
from lplkit.store import format as fmt
from lplkit.store import index as idx
from lplkit.store.lock import StoreLock
from lplkit.store.markers import read_marker
from lplkit.store.shard_rows import ShardRows
from lplkit.store.sidecar import remove_if_exists, url_to_fs, write_json_atomic
from lplkit.store.tooling import array_of, consolidate

__all__ = [
    "IDENTITY_KEYS",
    "TEXT_DIR",
    "TEXT_KEY",
    "TextRows",
    "TextWriter",
    "bytes_per_row",
    "check_name",
    "text_entries",
]

TEXT_DIR = "text"
TEXT_KEY = "text_encoders"  # manifest field: name -> entry
STATES, MASK, POOLED = "states", "mask", "pooled"
EMPTY = "empty_"
DIMENSION_NAMES: dict[str, tuple[str, ...]] = {
    STATES: ("sample", "token", "feature"),
    MASK: ("sample", "token"),
    POOLED: ("sample", "feature"),
}
#: entry fields that make two encodes of one name the same cache (else the name is refused)
IDENTITY_KEYS = ("id", "subfolder", "revision", "class", "config_hash", "layer", "pass_mask",
                 "max_tokens", "hidden_size", "pooled_size", "dtype")  # fmt: skip
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str) -> str:
    """An encoder name is one path component: letters, digits, `_.-` (at most 64)."""
    if not _NAME.fullmatch(name):
        raise StoreError(
            f"text encoder name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
            "(starting with a letter or digit); pass --name"
        )
    return name


def array_names(entry: dict[str, Any]) -> tuple[str, ...]:
    """The per-row arrays of an encoder entry."""
    return (STATES, MASK, POOLED) if entry.get("pooled_size") else (STATES, MASK)


def row_shapes(entry: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    L, D, P = entry["max_tokens"], entry["hidden_size"], entry.get("pooled_size")
    shapes = {STATES: (L, D), MASK: (L,), POOLED: (P,)}
    return {a: shapes[a] for a in array_names(entry)}


def bytes_per_row(entry: dict[str, Any]) -> int:
    """Stored bytes of one row (states + mask + pooled)."""
    item = fmt.storage_dtype(entry["dtype"]).itemsize
    L, D, P = entry["max_tokens"], entry["hidden_size"], entry.get("pooled_size") or 0
    return L * D * item + L + P * item


def text_entries(manifest: dict[str, Any], *, completed_only: bool = False) -> dict[str, Any]:
    """name -> manifest entry of each cached text encoder (completed ones with `completed_only`)."""
    entries = manifest.get(TEXT_KEY) or {}
    return {n: e for n, e in entries.items() if not completed_only or (e or {}).get("completed")}


def path(name: str, array: str = "") -> str:
    """Path of encoder `name`'s group (or one of its arrays) inside the store."""
    return f"{TEXT_DIR}/{name}" + (f"/{array}" if array else "")


def geometry(group: zarr.Group) -> tuple[int, int]:
    """(rows per shard, rows per inner chunk) of the store's moments array."""
    moments = array_of(group, fmt.MOMENTS)
    shards = moments.shards
    if shards is None:
        raise StoreCorruptError("the store's moments array is not sharded")
    return int(shards[0]), int(moments.chunks[0])


def _manifest(group: zarr.Group) -> dict[str, Any]:
    """A copy of the manifest stored in `group`'s attributes."""
    return cast(dict[str, Any], copy.deepcopy(dict(group.attrs)[fmt.MANIFEST_KEY]))


def _identity_diffs(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{k}: stored {old.get(k)!r}, requested {new.get(k)!r}"
        for k in IDENTITY_KEYS
        if old.get(k) != new.get(k)
    ]


def check_compatible(url: str, manifest: Any, name: str, entry: dict[str, Any]) -> None:
    """`StoreMismatchError` (one line) when the store already caches `name` with another identity
    (model, revision, layer, L, dtype, ...); `lplkit encode` checks this before writing anything."""
    stored = text_entries(manifest).get(name) if isinstance(manifest, dict) else None
    diffs = _identity_diffs(stored, entry) if isinstance(stored, dict) else []
    if diffs:
        raise StoreMismatchError(
            f"{url} already caches text encoder {name!r} with other settings ({'; '.join(diffs)}); "
            "pass --name (lplkit encode-text) to store a second one"
        )


class TextWriter:
    """Writes one text encoder's arrays shard by shard into a finished store.

    Protocol as `StoreWriter`: shard `s` belongs to rank `s % world_size`; `write_shard` deletes
    the shard's marker, writes every array, then the marker with the sha256 of each array's stored
    bytes; `finalize` (rank 0, after all ranks) sums the markers' counts into the manifest entry.
    """

    def __init__(self, url: str, group: zarr.Group, name: str, entry: dict[str, Any],
                 rank: int, world_size: int) -> None:  # fmt: skip
        self.url = str(url)
        self.fs, self.root = url_to_fs(self.url)
        self.group = group
        self.name = name
        self.entry = entry
        self.rank, self.world_size = rank, world_size
        self.count = int(_manifest(group)["source"]["count"])
        self.shard_rows, self.chunk_rows = geometry(group)
        self.text_root = f"{self.root}/{path(name)}"
        self.lock: StoreLock | None = None

    @classmethod
    def create_or_resume(
        cls,
        url: str,
        name: str,
        entry: dict[str, Any],
        *,
        rank: int = 0,
        world_size: int = 1,
        take_lock: bool = True,
    ) -> TextWriter:
        """Add (rank 0) or reopen encoder `name` of the finished store at `url`.

        `entry` holds the encoder's identity (`IDENTITY_KEYS`, family, preset, ...). An existing
        entry of that name with another identity raises `StoreMismatchError` (one line)."""
        check_name(name)
        fs, root = url_to_fs(str(url))
        lock = StoreLock(fs, root) if rank == 0 and take_lock else None
        if lock is not None:
            lock.acquire()
        try:
            group, manifest = fmt.open_manifest(str(url))
            if not manifest.get("completed"):
                raise StoreError(
                    f"{url} is not finished; re-run its `lplkit encode` command before adding text"
                )
            group = zarr.open_group(str(url), mode="r+", use_consolidated=False)
            stored = text_entries(manifest).get(name)
            if stored is not None:
                check_compatible(str(url), manifest, name, entry)
                entry = dict(stored)
            elif rank == 0:
                entry = cls._create(group, manifest, name, entry)
            else:
                raise StoreError(f"rank {rank}: text encoder {name!r} was not created by rank 0")
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        writer = cls(str(url), group, name, entry, rank, world_size)
        writer.lock = lock
        return writer

    @staticmethod
    def _create(
        group: zarr.Group, manifest: dict[str, Any], name: str, entry: dict[str, Any]
    ) -> dict[str, Any]:
        from lplkit.store.writer import compressors_for

        count = int(manifest["source"]["count"])
        shard_rows, chunk_rows = geometry(group)
        entry = {**entry, "completed": False, "counts": None}
        entry["storage_dtype"] = fmt.storage_dtype(entry["dtype"]).name
        comp = compressors_for(manifest["codec"])
        sub = group.require_group(path(name))
        for array, shape in row_shapes(entry).items():
            dtype = "uint8" if array == MASK else entry["storage_dtype"]
            sub.create_array(array, shape=(count, *shape), dtype=dtype,
                             chunks=(chunk_rows, *shape), shards=(shard_rows, *shape),
                             fill_value=0, compressors=comp, overwrite=True,
                             dimension_names=DIMENSION_NAMES[array])  # fmt: skip
            sub.create_array(EMPTY + array, shape=(1, *shape), dtype=dtype, chunks=(1, *shape),
                             fill_value=0, overwrite=True,
                             dimension_names=DIMENSION_NAMES[array])  # fmt: skip
        # the entry goes last: its presence says the arrays exist
        m = _manifest(group)
        m.setdefault(TEXT_KEY, {})[name] = entry
        group.attrs[fmt.MANIFEST_KEY] = m
        return entry

    # -- geometry -------------------------------------------------------------------------------

    @property
    def n_shards(self) -> int:
        return fmt.n_shards(self.count, self.shard_rows)

    def shard_range(self, shard: int) -> tuple[int, int]:
        return fmt.shard_range(shard, self.count, self.shard_rows)

    def owns(self, shard: int) -> bool:
        return shard % self.world_size == self.rank

    def is_complete(self, shard: int) -> bool:
        return read_marker(self.fs, self.text_root, shard, *self.shard_range(shard)) is not None

    def all_pending_shards(self) -> list[int]:
        return [s for s in range(self.n_shards) if not self.is_complete(s)]

    def pending_shards(self) -> list[int]:
        return [s for s in range(self.n_shards) if self.owns(s) and not self.is_complete(s)]

    # -- writing --------------------------------------------------------------------------------

    def _stored(self, array: str, values: np.ndarray, ok: np.ndarray, where: int) -> np.ndarray:
        shape = (len(ok), *row_shapes(self.entry)[array])
        if values.shape != shape:
            raise ValueError(f"text {array} at position {where}: shape {values.shape}, not {shape}")
        if array == MASK:
            out = np.asarray(values, dtype=np.uint8).copy()
            out[~ok] = 0
            return out
        x = np.array(values, dtype=np.float32)  # a copy: zeroing must not touch the caller's
        x[~ok] = 0.0
        stored = fmt.to_storage(x, self.entry["dtype"])
        bad = ~fmt.finite_rows(stored, self.entry["dtype"])
        if bad.any():
            rows = (where + np.flatnonzero(bad)[:5]).tolist()
            raise StoreError(
                f"text encoder {self.name!r}: non-finite {array} at positions {rows} in "
                f"{self.entry['dtype']}; use --text-dtype float32 or bfloat16 if fp16 overflows"
            )
        return stored

    def write_empty(self, outputs: dict[str, np.ndarray]) -> None:
        """The empty caption's outputs (`{states (1, L, D), mask (1, L), pooled (1, P)}`)."""
        ok = np.ones(1, dtype=bool)
        for array in array_names(self.entry):
            arr = array_of(self.group, path(self.name, EMPTY + array))
            arr[:] = self._stored(array, outputs[array], ok, -1)

    def write_shard(self, shard: int, outputs: dict[str, np.ndarray], ok: np.ndarray,
                    n_truncated: int, n_empty: int) -> dict[str, Any]:  # fmt: skip
        """Write one whole shard (`outputs[array]` has the shard's rows; rows not `ok` are stored
        as zeros), then its completion marker; returns the marker."""
        if not self.owns(shard):
            raise StoreError(f"rank {self.rank} tried to write text shard {shard} of another rank")
        start, stop = self.shard_range(shard)
        ok = np.asarray(ok, dtype=bool)
        if ok.shape != (stop - start,):
            raise ValueError(f"text shard {shard}: {ok.shape} ok flags for {stop - start} rows")
        marker_path = fmt.marker_path(self.text_root, shard)
        try:
            remove_if_exists(self.fs, marker_path)
            stored = {a: self._stored(a, outputs[a], ok, start) for a in array_names(self.entry)}
            for array, values in stored.items():
                arr = array_of(self.group, path(self.name, array))
                key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
                remove_if_exists(self.fs, f"{self.text_root}/{array}/{key}")
                arr[start:stop] = values
            marker = {
                "shard": shard,
                "start": start,
                "stop": stop,
                "n_ok": int(ok.sum()),
                "n_skipped": int((~ok).sum()),
                "n_truncated": int(n_truncated),
                "n_empty": int(n_empty),
                "checksums": {a: fmt.sha256_array(v) for a, v in stored.items()},
                "rank": self.rank,
                "written_at": time.time(),
            }
            write_json_atomic(self.fs, marker_path, marker)
        except OSError as exc:
            raise StoreError(
                f"writing text shard {shard} of {self.url} failed: {exc.strerror or exc}; free "
                "space or fix the storage, then re-run the same command (it resumes)"
            ) from exc
        return marker

    def finalize(self) -> dict[str, Any]:
        """Rank 0, after every shard is written: counts and checksums into the entry, completed."""
        pending = self.all_pending_shards()
        if pending:
            raise StoreError(
                f"text encoder {self.name!r} of {self.url}: {len(pending)} shard(s) not complete "
                f"({', '.join(map(str, pending[:10]))}); re-run the same command to finish them"
            )
        counts = {"ok": 0, "skipped": 0, "truncated": 0, "empty": 0}
        for s in range(self.n_shards):
            marker = read_marker(self.fs, self.text_root, s, *self.shard_range(s)) or {}
            for key in counts:
                counts[key] += int(marker.get(f"n_{key}", 0))
        empty = {
            a: fmt.sha256_array(np.asarray(array_of(self.group, path(self.name, EMPTY + a))[:]))
            for a in array_names(self.entry)
        }
        self.entry = {**self.entry, "completed": True, "counts": counts, "empty_sha256": empty}
        m = _manifest(self.group)
        m.setdefault(TEXT_KEY, {})[self.name] = self.entry
        try:
            self.group.attrs[fmt.MANIFEST_KEY] = m
            consolidate(self.url)
        except OSError as exc:
            raise StoreError(f"finalizing text encoder {self.name!r} failed: {exc}") from exc
        return self.entry

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> TextWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ok_rows(fs: Any, root: str, count: int) -> tuple[np.ndarray, Any]:
    """(ok flags (N,), caption column) of a finished store, from its index.parquet."""
    index = idx.IndexFile(count, fs=fs, path=f"{root}/{fmt.INDEX_FILE}")
    _, ok_positions = index.labels_and_ok()
    ok = np.ones(count, dtype=bool)
    if ok_positions is not None:
        ok[:] = False
        ok[ok_positions] = True
    return ok, index.column("caption")


class TextRows:
    """Reads one cached encoder's rows by position: stored dtype numpy arrays (one `pread` per
    row of a raw local store, grouped zarr chunk reads otherwise)."""

    def __init__(self, url: str, group: zarr.Group, name: str, entry: dict[str, Any]) -> None:
        fs, root = url_to_fs(url)
        self.name, self.entry = name, entry
        self.arrays = {a: array_of(group, path(name, a)) for a in array_names(entry)}
        self.empty_arrays = {a: array_of(group, path(name, EMPTY + a)) for a in self.arrays}
        self.chunk_rows = int(next(iter(self.arrays.values())).chunks[0])
        direct = {
            a: ShardRows.for_array(fs, root, path(name, a), arr.metadata.to_dict())
            for a, arr in self.arrays.items()
        }
        self.direct = direct if all(r is not None for r in direct.values()) else None

    def read(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """{states, mask[, pooled]} of `positions` (any order), stored dtype."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        out: dict[str, np.ndarray] = {}
        for a, arr in self.arrays.items():
            buf = np.empty((len(pos), *arr.shape[1:]), dtype=arr.dtype)
            reader = None if self.direct is None else self.direct[a]
            if reader is not None:
                reader.read(pos, buf)
            else:
                chunks = pos // self.chunk_rows
                for c in np.unique(chunks).tolist():
                    lo = c * self.chunk_rows
                    block = np.asarray(arr[lo : min(lo + self.chunk_rows, arr.shape[0])])
                    mine = np.flatnonzero(chunks == c)
                    buf[mine] = block[pos[mine] - lo]
            out[a] = buf
        return out

    def empty(self) -> dict[str, np.ndarray]:
        """The empty caption's outputs (1 row each), stored dtype."""
        return {a: np.asarray(self.empty_arrays[a][:]) for a in self.arrays}
