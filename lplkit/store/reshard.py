"""Rewrite a finished store's arrays in another shard geometry (`lplkit upgrade` to layout 3).

Layouts 1-2 sized shards in rows (1024 by default); layout 3 sizes them in bytes
(`format.store_geometry`). `reshard_store` copies the stored bytes (no re-encoding, no dtype round
trip) into the new geometry, one new shard and one array at a time (memory: one array's shard), and
writes each new shard's index part (rows of index.parquet) and completion marker (sha256 of the
bytes copied), the same files `StoreWriter.write_shard` writes. index.parquet is unchanged (a row
per position, whatever the shards).

Interruptions leave a valid store (the protocol)::

    STORE/.reshard/{moments,moments_flip,labels,progress,index_parts}   1. staged; STORE untouched
    STORE/.reshard/READY.json                                           2. staging complete
    swap: STORE/X -> .reshard/old/X, .reshard/X -> STORE/X (each array, progress, index_parts)
    manifest: new shard_size/chunk_size/geometry, layout 3; READY.json removed; .reshard/ removed

A crash while staging leaves the old store as it was (the next run starts staging again). A crash
after READY.json leaves a store whose arrays and manifest may disagree: `format.open_manifest`
refuses it in one line until `lplkit upgrade STORE` is re-run, which finishes the swap (each step is
skipped when already done).
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np

from lplkit.errors import StoreError
from lplkit.store import format as fmt
from lplkit.store import index as idx
from lplkit.store.sidecar import read_json, remove_if_exists, url_to_fs, write_json_atomic
from lplkit.store.tooling import array_of

__all__ = ["STAGING_DIR", "finish_swap", "new_geometry", "reshard_store"]

STAGING_DIR = fmt.RESHARD_DIR
_READY = posixpath.basename(fmt.RESHARD_READY)
_OLD = "old"


def new_geometry(manifest: dict[str, Any], shard_mb: float | None = None) -> dict[str, Any]:
    """`{"shard_size", "chunk_size", "geometry"}` of `manifest`'s store sized in bytes."""
    return fmt.store_geometry(
        manifest["latent_shape"],
        manifest["dtype"],
        manifest["flips"],
        int(manifest["source"]["count"]),
        shard_mb=shard_mb,
    )


def _moved(manifest: dict[str, Any]) -> list[str]:
    """What the swap moves into place: the arrays, then the markers and the index parts."""
    return [*fmt.array_names(manifest), fmt.PROGRESS_DIR, fmt.INDEX_PARTS_DIR]


def reshard_store(url: str, manifest: dict[str, Any], geo: dict[str, Any]) -> dict[str, Any]:
    """Copy the finished store at `url` into geometry `geo` (`new_geometry`) and swap it in;
    returns the new manifest. Any earlier staging without READY.json is discarded first."""
    import zarr

    from lplkit.store.writer import array_spec

    fs, root = url_to_fs(url)
    staging = posixpath.join(root, STAGING_DIR)
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
    target = {**manifest, **geo, "layout_version": fmt.LAYOUT_VERSION}
    count = int(manifest["source"]["count"])
    src_group = zarr.open_group(url, mode="r", use_consolidated=False)
    base = url.rstrip("/") + "/" + STAGING_DIR
    names = fmt.array_names(manifest)
    dst = {n: zarr.create_array(f"{base}/{n}", **array_spec(n, target)) for n in names}
    src = {n: array_of(src_group, n) for n in names}
    index = idx.IndexFile(count, fs=fs, path=posixpath.join(root, fmt.INDEX_FILE))
    shard_size = int(target["shard_size"])
    for s in range(fmt.n_shards(count, shard_size)):
        start, stop = fmt.shard_range(s, count, shard_size)
        sums = {}
        for name in names:  # one array's rows of one shard in memory at a time
            data = np.asarray(src[name][start:stop])
            sums[name] = fmt.sha256_array(data)
            dst[name][start:stop] = data
            del data
        table = idx.conform(index.take(np.arange(start, stop)))
        if not np.array_equal(table.column("position").to_numpy(), np.arange(start, stop)):
            raise StoreError(f"{url}: index.parquet lacks rows {start}..{stop - 1}; run verify")
        part = idx.table_to_bytes(table)
        n_ok = int(idx.ok_mask(table).sum())
        fs.makedirs(posixpath.join(staging, fmt.INDEX_PARTS_DIR), exist_ok=True)
        fs.pipe_file(
            posixpath.join(staging, fmt.INDEX_PARTS_DIR, fmt.shard_name(s) + ".parquet"), part
        )
        marker = {
            "shard": s,
            "start": start,
            "stop": stop,
            "n_ok": n_ok,
            "n_skipped": stop - start - n_ok,
            "checksums": sums,
            "index_part_sha256": idx.sha256_bytes(part),
            "rank": 0,
            "resharded_from": int(manifest["shard_size"]),
        }
        write_json_atomic(
            fs, posixpath.join(staging, fmt.PROGRESS_DIR, fmt.shard_name(s) + ".json"), marker
        )
    write_json_atomic(fs, posixpath.join(staging, _READY), {"manifest": target})
    return finish_swap(url)


def finish_swap(url: str) -> dict[str, Any]:
    """Move a complete staging (READY.json) into place and write its manifest; idempotent, so a
    swap cut short by a crash is finished by calling it again. Returns the new manifest."""
    import zarr

    fs, root = url_to_fs(url)
    staging = posixpath.join(root, STAGING_DIR)
    target = read_json(fs, posixpath.join(staging, _READY))["manifest"]
    fs.makedirs(posixpath.join(staging, _OLD), exist_ok=True)
    for name in _moved(target):
        new, cur, old = (posixpath.join(staging, name), posixpath.join(root, name),
                         posixpath.join(staging, _OLD, name))  # fmt: skip
        if not fs.exists(new):  # moved in by an earlier run
            continue
        if fs.exists(cur):
            fs.mv(cur, old, recursive=True)
        fs.mv(new, cur, recursive=True)
    group = zarr.open_group(url, mode="r+", use_consolidated=False)
    group.attrs[fmt.MANIFEST_KEY] = target
    remove_if_exists(fs, posixpath.join(staging, _READY))  # from here the store is consistent
    fs.rm(staging, recursive=True)
    return dict(target)


def swap_pending(fs: Any, root: str) -> bool:
    """Whether an upgrade stopped between staging and the end of its swap."""
    return bool(fs.exists(posixpath.join(root, STAGING_DIR, _READY)))
