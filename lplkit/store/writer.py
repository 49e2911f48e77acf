"""`StoreWriter`: a resumable, shard-owning writer with per-shard checksums and completion markers.

Life of a store (one process or a torchrun job of `world_size` ranks)::

    w = StoreWriter.create_or_resume(url, manifest, rank=r, world_size=k)
    for s in w.pending_shards():            # this rank's shards without a valid marker
        w.write_shard(s, moments, moments_flip, labels, rows)
    <barrier>                               # the caller's (e.g. dist.barrier()) before finalize
    if r == 0: w.finalize()                 # merge index parts -> index.parquet, completed = True
    w.close()                               # rank 0: releases the writer lock

Rules that make it correct:
- Shard `s` = positions `[s*S, min((s+1)*S, N))` is one zarr shard of every array, and it belongs to rank
  `s % world_size`; no two writers ever touch one zarr shard (zarr 3 loses data when they do).
- A shard is complete only when `progress/shard-XXXXX.json` exists; it is written atomically *after*
  the arrays and the index part, with the sha256 of each array's stored bytes read back from the
  store. A crash anywhere before leaves the shard pending, and resume re-writes it whole.
- Rank 0 creates the arrays and writes the manifest last; other ranks poll (up to `wait_timeout`
  seconds) until the manifest appears, so no barrier is needed before writing.
- An existing store whose autoencoder/resolution/crop/dtype/flips/shard size/source differ from the
  request is refused (`StoreMismatchError`): no stale-cache mixing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from lplkit.errors import StoreCorruptError, StoreError, StoreMismatchError
from lplkit.store import format as fmt
from lplkit.store import index as idx
from lplkit.store.lock import StoreLock
from lplkit.store.markers import MarkerScan, index_part_shards, scan_markers
from lplkit.store.ownership import check_out_dir
from lplkit.store.sidecar import open_atomic, remove_if_exists, url_to_fs, write_json_atomic
from lplkit.store.tooling import DIMENSION_NAMES, array_of, consolidate


def compressors_for(codec: str) -> Any:
    """zarr v3 `compressors=` for a codec name (`None` = stored raw)."""
    if codec == "none":
        return None
    if codec == "zstd":
        return [ZstdCodec(level=3)]
    if codec == "blosc-zstd":
        return [BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")]
    raise ValueError(f"codec must be one of {fmt.CODECS}, got {codec!r}")


def array_spec(name: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """zarr `create_array` arguments of store array `name` (shape, dtype, chunk and shard geometry,
    codec, fill value, dimension names) for a store with this manifest."""
    count, latent = manifest["source"]["count"], tuple(manifest["latent_shape"])
    shard, chunk = manifest["shard_size"], manifest["chunk_size"]
    common = {
        "compressors": compressors_for(manifest["codec"]),
        "dimension_names": DIMENSION_NAMES[name],
    }
    if name == fmt.LABELS:
        return dict(
            common, shape=(count,), dtype="int32", chunks=(chunk,), shards=(shard,), fill_value=-1
        )
    return dict(
        common,
        shape=(count, 2, *latent),
        dtype=fmt.storage_dtype(manifest["dtype"]),
        chunks=(chunk, 2, *latent),
        shards=(shard, 2, *latent),
        fill_value=0,
    )


def open_group(url: str, mode: str = "r") -> zarr.Group:
    """Open the store's zarr group (raises FileNotFoundError when absent)."""
    return zarr.open_group(str(url), mode=mode, use_consolidated=False)  # type: ignore[arg-type]


def _checked_manifest(url: str, manifest: Any) -> dict[str, Any]:
    """The stored manifest of an existing store, refused (`StoreCorruptError`) when invalid."""
    problems = fmt.manifest_problems(manifest)
    if problems:
        raise StoreCorruptError(
            f"{url}: the stored manifest is invalid ({'; '.join(problems[:3])}); it was damaged or "
            "edited: restore it, or write to a new --out"
        )
    return dict(manifest)


class StoreWriter:
    """Writes a latent store shard by shard (see the module docstring for the protocol)."""

    def __init__(
        self, url: str, group: zarr.Group, manifest: dict[str, Any], rank: int, world_size: int
    ) -> None:
        self.url = str(url)
        self.fs, self.root = url_to_fs(self.url)
        self.group = group
        self.manifest = manifest
        self.rank = rank
        self.world_size = world_size
        self.lock: StoreLock | None = None
        self._scan: MarkerScan | None = None

    # -- creation -------------------------------------------------------------------------------

    @classmethod
    def create_or_resume(
        cls,
        url: str,
        manifest: dict[str, Any],
        *,
        rank: int = 0,
        world_size: int = 1,
        wait_timeout: float = 600.0,
        take_lock: bool = True,
    ) -> StoreWriter:
        """Create the store (rank 0) or open an existing one after checking it matches `manifest`.

        `manifest` needs autoencoder, resolution, latent_shape and source {id, split, revision,
        count}; everything else defaults (see `format.new_manifest`). Rank 0 takes the writer lock
        (`take_lock`); ranks > 0 wait for rank 0's manifest (polling, `wait_timeout` seconds).
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        requested = fmt.complete_manifest(manifest)
        fs, root = url_to_fs(str(url))
        if rank == 0:  # before the lock file: a folder that is not ours is left untouched
            check_out_dir(fs, root, str(url))
        lock = StoreLock(fs, root) if rank == 0 and take_lock else None
        if lock is not None:
            lock.acquire()
        try:
            if rank == 0:
                group, stored = cls._create_or_open(str(url), fs, root, requested)
            else:
                group, stored = cls._wait_for(str(url), wait_timeout)
            diffs = fmt.identity_differences(stored, requested)
            if diffs:
                only_rows = all(d.startswith("shard_size:") for d in diffs)
                fix = (  # e.g. a store begun with row-sized shards (layout <= 2), resumed
                    f"resume it with --shard-size {stored['shard_size']}, or write to a new --out"
                    if only_rows
                    else "write to a new --out, or delete the store to re-encode"
                )
                raise StoreMismatchError(
                    f"the store at {url} was made with different settings ({'; '.join(diffs)}); "
                    + fix
                )
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        writer = cls(str(url), group, stored, rank, world_size)
        writer.lock = lock
        return writer

    @staticmethod
    def _create_or_open(
        url: str, fs: Any, root: str, manifest: dict[str, Any]
    ) -> tuple[zarr.Group, dict[str, Any]]:
        try:
            group = open_group(url, mode="r+")
        except FileNotFoundError:
            group = None
        if group is not None and fmt.MANIFEST_KEY in group.attrs:
            return group, _checked_manifest(url, group.attrs[fmt.MANIFEST_KEY])
        if group is not None and set(group.keys()) - set(fmt.array_names({"flips": True})):
            raise StoreError(
                f"{url} is a zarr group that is not an lplkit store; choose another --out"
            )
        if group is None and fs.exists(root) and fs.isfile(root):
            raise StoreError(f"{url} is a file, not a store directory; choose another --out")
        group = zarr.open_group(url, mode="a", use_consolidated=False)
        for name in fmt.array_names(manifest):
            group.create_array(name, **array_spec(name, manifest), overwrite=True)
        # The manifest goes last: its presence tells other ranks the arrays exist.
        group.attrs[fmt.MANIFEST_KEY] = manifest
        return group, manifest

    @staticmethod
    def _wait_for(url: str, timeout: float) -> tuple[zarr.Group, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                group = open_group(url, mode="r+")
                if fmt.MANIFEST_KEY in group.attrs:
                    return group, _checked_manifest(url, group.attrs[fmt.MANIFEST_KEY])
            except FileNotFoundError:
                pass
            if time.monotonic() > deadline:
                raise StoreError(
                    f"rank 0 did not create the store {url} within {timeout:.0f} s; check rank 0's log"
                )
            time.sleep(0.2)

    # -- geometry -------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return int(self.manifest["source"]["count"])

    @property
    def n_shards(self) -> int:
        return fmt.n_shards(self.count, self.manifest["shard_size"])

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Positions `[start, stop)` of `shard`."""
        return fmt.shard_range(shard, self.count, self.manifest["shard_size"])

    def owns(self, shard: int) -> bool:
        """Whether this rank writes `shard` (static round-robin: `shard % world_size == rank`)."""
        return shard % self.world_size == self.rank

    def scan(self, *, refresh: bool = False) -> MarkerScan:
        """The completion markers as this writer knows them: scanned once (one listing, each marker
        read once), then kept up to date with what this process writes. `refresh` lists again and
        reads only the markers not yet known (other ranks' new shards). Ranks > 0 read only their
        own shards' markers on the first scan."""
        if self._scan is None or refresh:
            only = None if self.rank == 0 or refresh else self.owns
            self._scan = scan_markers(
                self.fs, self.root, self.count, self.manifest["shard_size"],
                only=only, known=self._scan,
            )  # fmt: skip
        return self._scan

    def is_complete(self, shard: int) -> bool:
        return self.scan().complete(shard)

    def all_pending_shards(self) -> list[int]:
        """Every shard (any rank's) without a valid completion marker. A single writer knows every
        marker already; with several ranks the others' new markers are read (once each)."""
        return self.scan(refresh=self.world_size > 1).pending()

    def pending_shards(self) -> list[int]:
        """This rank's shards without a valid completion marker, in order."""
        return self.scan().pending(s for s in range(self.n_shards) if self.owns(s))

    # -- writing --------------------------------------------------------------------------------

    @staticmethod
    def warm_up() -> None:
        """Pay the writer's one-time costs now (pyarrow imports pandas on its first list
        conversion: ~0.25 s): `lplkit encode` calls it in the writer thread at the start, so the
        last shard's write, which nothing overlaps, does not include them."""
        idx.rows_to_table([], 0, np.zeros(0, np.int32))

    def write_shard(
        self,
        shard: int,
        moments: np.ndarray,
        moments_flip: np.ndarray | None,
        labels: np.ndarray,
        rows: Sequence[dict[str, Any]],
    ) -> dict[str, Any]:
        """Write one whole shard, then its completion marker; returns the marker.

        `moments`/`moments_flip` are float32-convertible `(n, 2, C, h, w)` with n = the shard's
        length; rows whose index status is not "ok" are stored as zeros. Raises `StoreError` if an
        ok sample is non-finite (or has std < 0) in the store dtype, e.g. fp16 overflow.
        """
        if not self.owns(shard):
            raise StoreError(
                f"rank {self.rank} tried to write shard {shard}, owned by rank "
                f"{shard % self.world_size}; two writers in one shard lose data"
            )
        start, stop = self.shard_range(shard)
        try:
            return self._write_shard(shard, start, stop, moments, moments_flip, labels, rows)
        except StoreError:
            raise
        except OSError as exc:  # disk full, I/O error, lost mount: the marker was not written
            raise StoreError(
                f"writing shard {shard} (positions {start}..{stop - 1}) of {self.url} failed: "
                f"{exc.strerror or exc}; free space or fix the storage, then re-run the same "
                "command (this shard stays pending and is rewritten whole)"
            ) from exc

    def _write_shard(
        self,
        shard: int,
        start: int,
        stop: int,
        moments: np.ndarray,
        moments_flip: np.ndarray | None,
        labels: np.ndarray,
        rows: Sequence[dict[str, Any]],
    ) -> dict[str, Any]:
        n = stop - start
        # Invalidate first: a crash from here until the new marker leaves the shard pending.
        remove_if_exists(self.fs, fmt.marker_path(self.root, shard))
        self.scan().forget(shard)
        if self.manifest.get("completed"):  # rewriting a finished store: readers must not trust it
            self.manifest = dict(self.manifest, completed=False, counts=None)
            self.group.attrs[fmt.MANIFEST_KEY] = self.manifest
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"shard {shard}: labels shape {labels.shape}, expected ({n},)")
        labels = labels.astype(np.int32)
        table = idx.rows_to_table(rows, start, labels)
        ok = idx.ok_mask(table)
        arrays = {fmt.MOMENTS: moments}
        if self.manifest["flips"]:
            if moments_flip is None:
                raise ValueError(f"shard {shard}: this store has flips; pass moments_flip")
            arrays[fmt.MOMENTS_FLIP] = moments_flip
        elif moments_flip is not None:
            raise ValueError(f"shard {shard}: this store has no flips; pass moments_flip=None")
        stored = {
            name: self._to_stored(name, values, ok, start, n) for name, values in arrays.items()
        }
        stored[fmt.LABELS] = labels
        part = idx.table_to_bytes(table)
        marker = {
            "shard": shard,
            "start": start,
            "stop": stop,
            "n_ok": int(ok.sum()),
            "n_skipped": int(n - ok.sum()),
            # Hash of what was handed to zarr (lossless codecs: = the decoded stored bytes, which
            # is what verify re-reads and compares).
            "checksums": {name: fmt.sha256_array(values) for name, values in stored.items()},
            "index_part_sha256": idx.sha256_bytes(part),
            "rank": self.rank,
            "written_at": time.time(),
        }
        for name, values in stored.items():
            # zarr merges a shard write into the existing shard file (read-modify-write); a damaged
            # old file (half-written, bit rot) would fail that read, so the whole shard starts fresh.
            arr = array_of(self.group, name)
            key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
            remove_if_exists(self.fs, f"{self.root}/{name}/{key}")
            arr[start:stop] = values
        self.fs.makedirs(f"{self.root}/{fmt.INDEX_PARTS_DIR}", exist_ok=True)
        self.fs.pipe_file(fmt.index_part_path(self.root, shard), part)
        write_json_atomic(self.fs, fmt.marker_path(self.root, shard), marker)
        self.scan().record(marker)
        return marker

    def _to_stored(
        self, name: str, values: np.ndarray, ok: np.ndarray, start: int, n: int
    ) -> np.ndarray:
        """float32 (n, 2, C, h, w) -> the stored dtype, skipped rows zeroed, bad samples refused."""
        x = np.asarray(values, dtype=np.float32)
        expected = (n, 2, *self.manifest["latent_shape"])
        if x.shape != expected:
            raise ValueError(
                f"{name} for positions {start}..{start + n}: shape {x.shape}, expected {expected}"
            )
        if not ok.all():
            x = x.copy()  # zeroing skipped rows must not touch the caller's array
            x[~ok] = 0.0
        dtype = self.manifest["dtype"]
        stored = fmt.to_storage(x, dtype)
        bad = ~fmt.finite_rows(stored, dtype) | (x[:, 1] < 0).reshape(n, -1).any(axis=1)
        if bad.any():
            where = (start + np.flatnonzero(bad)[:5]).tolist()
            biggest = np.abs(x[np.isfinite(x)]).max(initial=0)
            raise StoreError(
                f"{name}: non-finite values or negative std at positions {where} after conversion "
                f"to {dtype} (max |x| = {biggest:.3g}); check the autoencoder output, or use "
                "--dtype float32/bfloat16 if fp16 overflows"
            )
        return stored

    # -- finishing ------------------------------------------------------------------------------

    def finalize(self) -> dict[str, Any]:
        """Rank 0, after every rank's shards are written: build index.parquet, mark completed, then
        remove index_parts/ (the index now holds their rows).

        The index is streamed shard by shard (`index.IndexWriter`: one row group in memory, not
        the whole index) to a temp file that replaces index.parquet only when whole. Each shard's
        rows come from its index part, or, when it has none (parts are removed after a finalize;
        a shard re-encoded since has a new one), from the previous index.parquet. A finalize
        interrupted anywhere leaves a store the next one completes. Idempotent; raises
        `StoreError` naming the pending shards if some are not complete.
        """
        if self.rank != 0:
            raise StoreError(f"finalize() is rank 0's job (called on rank {self.rank})")
        pending = self.all_pending_shards()
        if pending:
            shown = ", ".join(map(str, pending[:10])) + (" ..." if len(pending) > 10 else "")
            raise StoreError(
                f"cannot finalize {self.url}: {len(pending)} shard(s) not complete ({shown}); "
                "re-run the same encode command to finish them"
            )
        parts = index_part_shards(self.fs, self.root, self.n_shards)
        if self.manifest.get("completed") and not parts:
            return self.manifest  # finalized before and nothing rewritten since
        index_path = f"{self.root}/{fmt.INDEX_FILE}"
        try:
            with open_atomic(self.fs, index_path) as sink:
                n_ok = self._write_index(sink, parts)
        except OSError as exc:
            raise self._finalize_failed(exc) from exc
        manifest = dict(self.manifest)
        manifest["counts"] = {"total": self.count, "ok": n_ok, "skipped": self.count - n_ok}
        manifest["completed"] = True
        try:
            self.group.attrs[fmt.MANIFEST_KEY] = manifest
            self.manifest = manifest
            consolidate(self.url)  # zarr/xarray/dask then open the store without listing sidecars
            # Only now: until the manifest says completed, a rerun rebuilds from the parts.
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(f"{self.root}/{fmt.INDEX_PARTS_DIR}", recursive=True)
        except OSError as exc:
            raise self._finalize_failed(exc) from exc
        return manifest

    def _write_index(self, sink: Any, parts: set[int]) -> int:
        """Stream every shard's index rows into `sink`; returns the ok count."""
        writer = idx.IndexWriter(sink)
        try:
            n_ok = self._write_shards(writer, parts)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        return n_ok

    def _write_shards(self, writer: idx.IndexWriter, parts: set[int]) -> int:
        previous: idx.IndexFile | None = None
        n_ok = 0
        for s in range(self.n_shards):
            start, stop = self.shard_range(s)
            if s in parts:
                table = idx.read_table(self.fs, fmt.index_part_path(self.root, s))
            else:
                if previous is None:
                    previous = self._previous_index(s)
                table = previous.rows(start, stop)
            positions = table.column("position").to_numpy()
            if not np.array_equal(positions, np.arange(start, stop)):
                raise StoreError(
                    f"{self.url}: the index rows of shard {s} do not cover positions "
                    f"{start}..{stop - 1}; run `lplkit verify {self.url} --repair`, then re-run the "
                    "same command"
                )
            n_ok += int(idx.ok_mask(table).sum())
            writer.write(table)
        return n_ok

    def _previous_index(self, shard: int) -> idx.IndexFile:
        """The index.parquet a previous finalize wrote (rows of shards without a part)."""
        problem = f"{fmt.INDEX_FILE} is missing"
        try:
            previous = idx.IndexFile(self.count, fs=self.fs, path=f"{self.root}/{fmt.INDEX_FILE}")
            if previous.aligned:
                return previous
            problem = f"{fmt.INDEX_FILE} does not hold one row per position"
        except FileNotFoundError:
            pass
        except (OSError, ValueError, pa.ArrowException) as exc:
            problem = f"{fmt.INDEX_FILE} is unreadable ({exc})"
        raise StoreError(
            f"cannot finalize {self.url}: shard {shard} has no index part and {problem}; run "
            f"`lplkit verify {self.url} --repair` (it marks such shards for re-encoding), then "
            "re-run the same command"
        )

    def _finalize_failed(self, exc: OSError) -> StoreError:
        return StoreError(
            f"finalizing {self.url} failed writing {fmt.INDEX_FILE} or the manifest: "
            f"{exc.strerror or exc}; free space or fix the storage, then re-run the same "
            "command (every shard is written; only the index is rebuilt)"
        )

    def close(self) -> None:
        """Release the writer lock (rank 0). Safe to call twice."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
