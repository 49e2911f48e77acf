"""`BucketedWriter`: writes a bucketed store (lplkit.store.buckets) as one `StoreWriter` per bucket.

Every bucket is a complete store of its own under `buckets/<b>/` (its latent shape, its geometry,
markers, checksums, resume), so everything `StoreWriter` guarantees holds per bucket. The root
holds the manifest (with `buckets`) and, after `finalize`, the global `index.parquet`::

    w = BucketedWriter.create_or_resume(url, manifest, rank=r, world_size=k)
    for b, sub in enumerate(w.writers):          # a StoreWriter per bucket
        for s in sub.pending_shards(): sub.write_shard(s, ...)
    <barrier>
    if r == 0: w.finalize()                      # each bucket, then index.parquet, completed
    w.close()

Rank 0 takes the writer lock of the root (the buckets' writers take none) and writes the root
manifest before the buckets; a request whose buckets (sizes, row counts) or other identity fields
differ from the stored ones is refused (`StoreMismatchError`).
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any

import numpy as np
import pyarrow as pa
import zarr

from lplkit.errors import StoreCorruptError, StoreError, StoreMismatchError
from lplkit.store import format as fmt
from lplkit.store import index as idx
from lplkit.store.buckets import BUCKETS_DIR, Bucket, bucket_url, buckets_of
from lplkit.store.lock import StoreLock
from lplkit.store.ownership import check_out_dir
from lplkit.store.sidecar import open_atomic, url_to_fs
from lplkit.store.tooling import consolidate
from lplkit.store.writer import StoreWriter, open_group

__all__ = ["BucketedWriter", "bucket_manifest", "bucketed_manifest", "write_global_index"]


def bucketed_manifest(manifest: dict[str, Any], buckets: list[Bucket]) -> dict[str, Any]:
    """The root manifest of a bucketed store: `manifest` (a square store's, for `--res`: its
    `latent_shape` and geometry are those of the res x res bucket, for reference) plus `buckets`."""
    m = copy.deepcopy(manifest)
    m["buckets"] = [b.to_dict() for b in buckets]
    return m


def bucket_manifest(root: dict[str, Any], bucket: Bucket, **geometry: Any) -> dict[str, Any]:
    """Bucket `bucket`'s own manifest: the root's settings with its latent shape, its row count as
    `source.count`, its geometry (`format.store_geometry`; `geometry` = shard_size / shard_mb
    overrides) and `bucket` {id, size, start}."""
    m = fmt.new_manifest(
        autoencoder=root["autoencoder"],
        resolution=root["resolution"],
        latent_shape=bucket.latent_shape,
        source={**root["source"], "count": bucket.rows},
        crop=root["crop"],
        dtype=root["dtype"],
        flips=root["flips"],
        codec=root["codec"],
        classes=root.get("classes"),
        **geometry,
    )
    m["bucket"] = {"id": bucket.id, "size": list(bucket.size), "start": bucket.start}
    return m


def write_global_index(url: str, buckets: list[Bucket]) -> int:
    """Stream every bucket's index.parquet into the root's, positions shifted by the bucket's
    start, with the `bucket` column; returns the ok count."""
    fs, root = url_to_fs(url)
    n_ok = 0
    with open_atomic(fs, f"{root}/{fmt.INDEX_FILE}") as sink:
        writer = idx.IndexWriter(sink, idx.BUCKETED_INDEX_SCHEMA)
        try:
            for b in buckets:
                sub_fs, sub_root = url_to_fs(bucket_url(url, b.id))
                part = idx.IndexFile(b.rows, fs=sub_fs, path=f"{sub_root}/{fmt.INDEX_FILE}")
                for lo in range(0, b.rows, idx.ROW_GROUP):
                    t = part.rows(lo, min(lo + idx.ROW_GROUP, b.rows))
                    positions = pa.array(t.column("position").to_numpy() + b.start, pa.int64())
                    t = t.set_column(0, "position", positions)
                    t = t.append_column(
                        idx.BUCKET_COLUMN, pa.array(np.full(len(t), b.id, np.int16), pa.int16())
                    )
                    n_ok += int(idx.ok_mask(t).sum())
                    writer.write(t)
        except BaseException:
            writer.abort()
            raise
        writer.close()
    return n_ok


class BucketedWriter:
    """The root of a bucketed store and one `StoreWriter` per bucket (module docstring)."""

    def __init__(
        self, url: str, group: zarr.Group, manifest: dict[str, Any], writers: list[StoreWriter]
    ) -> None:
        self.url = str(url)
        self.group = group
        self.manifest = manifest
        self.writers = writers
        self.lock: StoreLock | None = None

    @property
    def buckets(self) -> list[Bucket]:
        return buckets_of(self.manifest) or []

    @classmethod
    def create_or_resume(
        cls,
        url: str,
        manifest: dict[str, Any],
        *,
        rank: int = 0,
        world_size: int = 1,
        wait_timeout: float = 600.0,
        shard_size: int | None = None,
        shard_mb: float | None = None,
    ) -> BucketedWriter:
        """Create the bucketed store (rank 0) or open it after checking it matches `manifest` (a
        `bucketed_manifest`); then each bucket's `StoreWriter` (no lock of its own)."""
        requested = fmt.complete_manifest(manifest)
        buckets = buckets_of(requested)
        if not buckets:
            raise ValueError("a bucketed store needs at least one bucket")
        fs, root = url_to_fs(str(url))
        lock = None
        if rank == 0:
            check_out_dir(fs, root, str(url))
            lock = StoreLock(fs, root)
            lock.acquire()
        try:
            group, stored = (
                cls._create_or_open(str(url), requested)
                if rank == 0
                else cls._wait_for(str(url), wait_timeout)
            )
            diffs = fmt.identity_differences(stored, requested)
            if diffs:
                raise StoreMismatchError(
                    f"the store at {url} was made with different settings ({'; '.join(diffs)}); "
                    "write to a new --out, or delete the store to re-encode"
                )
            geometry: dict[str, Any] = {"shard_size": shard_size, "shard_mb": shard_mb}
            writers = [
                StoreWriter.create_or_resume(
                    bucket_url(str(url), b.id),
                    bucket_manifest(stored, b, **geometry),
                    rank=rank,
                    world_size=world_size,
                    wait_timeout=wait_timeout,
                    take_lock=False,
                )
                for b in buckets
            ]
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        writer = cls(str(url), group, stored, writers)
        writer.lock = lock
        return writer

    @staticmethod
    def _create_or_open(url: str, manifest: dict[str, Any]) -> tuple[zarr.Group, dict[str, Any]]:
        try:
            group = open_group(url, mode="r+")
        except FileNotFoundError:
            group = None
        if group is not None and fmt.MANIFEST_KEY in group.attrs:
            stored = group.attrs[fmt.MANIFEST_KEY]
            problems = fmt.manifest_problems(stored)
            if problems:
                raise StoreCorruptError(
                    f"{url}: the stored manifest is invalid ({'; '.join(problems[:3])}); restore "
                    "it, or write to a new --out"
                )
            return group, dict(stored)  # type: ignore[arg-type]
        group = zarr.open_group(url, mode="a", use_consolidated=False)
        # the manifest first (ranks > 0 wait for it; a root killed before it holds only zarr.json,
        # which a rerun may reuse), then the buckets' parent group
        group.attrs[fmt.MANIFEST_KEY] = manifest
        group.require_group(BUCKETS_DIR)
        return group, manifest

    @staticmethod
    def _wait_for(url: str, timeout: float) -> tuple[zarr.Group, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError):
                group = open_group(url, mode="r+")
                if fmt.MANIFEST_KEY in group.attrs:
                    return group, dict(group.attrs[fmt.MANIFEST_KEY])  # type: ignore[arg-type]
            if time.monotonic() > deadline:
                raise StoreError(
                    f"rank 0 did not create the store {url} within {timeout:.0f} s; check rank 0's log"
                )
            time.sleep(0.2)

    @property
    def n_shards(self) -> int:
        return sum(w.n_shards for w in self.writers)

    def pending_shards(self) -> list[tuple[int, int]]:
        """This rank's `(bucket, shard)` pairs without a valid completion marker."""
        return [(b, s) for b, w in enumerate(self.writers) for s in w.pending_shards()]

    def all_pending_shards(self) -> list[tuple[int, int]]:
        return [(b, s) for b, w in enumerate(self.writers) for s in w.all_pending_shards()]

    def finalize(self) -> dict[str, Any]:
        """Rank 0: finalize every bucket, then write the global index.parquet and mark the root
        completed (idempotent; `StoreError` naming the pending shards of the first unfinished
        bucket)."""
        changed = [not w.manifest.get("completed") for w in self.writers]
        for w in self.writers:
            w.finalize()
        fs, root = url_to_fs(self.url)
        if (
            self.manifest.get("completed")
            and not any(changed)
            and fs.exists(f"{root}/{fmt.INDEX_FILE}")
        ):
            return self.manifest  # finalized before and no bucket rewritten since
        try:
            n_ok = write_global_index(self.url, self.buckets)
        except OSError as exc:
            raise StoreError(
                f"finalizing {self.url} failed writing {fmt.INDEX_FILE}: {exc}; free space or "
                "fix the storage, then re-run the same command"
            ) from exc
        count = int(self.manifest["source"]["count"])
        manifest = dict(self.manifest, completed=True)
        manifest["counts"] = {"total": count, "ok": n_ok, "skipped": count - n_ok}
        self.group.attrs[fmt.MANIFEST_KEY] = manifest
        self.manifest = manifest
        consolidate(self.url)
        return manifest

    def invalidate(self) -> None:
        """Mark the root unfinished (a bucket is being rewritten)."""
        if self.manifest.get("completed"):
            self.manifest = dict(self.manifest, completed=False, counts=None)
            self.group.attrs[fmt.MANIFEST_KEY] = self.manifest

    def close(self) -> None:
        for w in self.writers:
            w.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> BucketedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
