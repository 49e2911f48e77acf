"""`upgrade_store`: bring a finished store to the current layout in place (`lplkit upgrade`).

Layout 3 (byte-sized shards): the arrays of a layout 1-2 store are copied into the new geometry by
`lplkit.store.reshard`; then the zarr tooling metadata of layout 2 (`lplkit.store.tooling`).
"""

from __future__ import annotations

import warnings
from typing import Any

from lplkit.errors import ConfigError, StoreError
from lplkit.store import format as fmt
from lplkit.store import reshard
from lplkit.store.lock import StoreLock
from lplkit.store.sidecar import read_json, url_to_fs, write_json_atomic
from lplkit.store.text import text_entries
from lplkit.store.tooling import (
    LAYOUT_VERSION,
    SIDECAR_WARNING,
    array_dims,
    consolidate,
    consolidated_current,
    layout_version,
    open_root,
    require_writable,
    store_writes,
)

__all__ = ["upgrade_store"]


def upgrade_store(url: str, shard_mb: float | None = None) -> dict[str, Any]:
    """Bring a finished store to the current layout in place: from layout <= 2 (or with
    `shard_mb` given and not the store's) its arrays are copied into shards sized in bytes
    (`lplkit.store.reshard`: bounded memory, interruption-safe, markers and index parts rewritten),
    then ``dimension_names`` on every array that lacks them, ``layout_version`` and ``geometry`` in
    the manifest, consolidated metadata. Values, index.parquet and the row order are unchanged.
    Idempotent: a store already at the layout is not written at all (``changed`` False), so a
    read-only one is fine; returns what was done (JSON-able)."""
    url = str(url)
    fs, root = url_to_fs(url)
    resumed = False
    if reshard.swap_pending(fs, root):  # an earlier upgrade stopped in its swap: finish it
        fmt.open_manifest(url, upgrading=True)
        with store_writes(url, f"upgrade {url}"):
            reshard.finish_swap(url)
        resumed = True
    group, manifest = fmt.open_manifest(url)
    if not manifest.get("completed"):
        raise StoreError(
            f"{url} is not finished; re-run its encode command (it writes layout {LAYOUT_VERSION})"
        )
    if manifest.get("buckets") is not None and shard_mb is not None:
        raise ConfigError(
            f"{url} is bucketed (--buckets): `lplkit upgrade --shard-mb` does not reshard bucketed "
            "stores; re-encode with the --shard-mb you want"
        )
    before = layout_version(manifest)
    geo = reshard.new_geometry(manifest, shard_mb)
    same = all(manifest[k] == geo[k] for k in ("shard_size", "chunk_size"))
    resharded = None
    if (before < 3 or shard_mb is not None) and not same:
        texts = sorted(text_entries(manifest))
        if texts:  # their arrays and markers follow the moments' shards: not resharded (yet)
            raise ConfigError(
                f"{url} caches text encoders ({', '.join(texts)}), which `lplkit upgrade` does not "
                "reshard: keep the store's layout (it opens as it is), or upgrade a copy without "
                "text/ and re-run `lplkit encode-text` on it"
            )
        require_writable(url, f"upgrade {url}")
        lock = StoreLock(fs, root)
        lock.acquire()
        try:
            with store_writes(url, f"upgrade {url}"):
                new = reshard.reshard_store(url, manifest, geo)
        finally:
            lock.release()
        resharded = {
            "shard_size": [manifest["shard_size"], new["shard_size"]],
            "chunk_size": [manifest["chunk_size"], new["chunk_size"]],
            "shards": [
                fmt.n_shards(new["source"]["count"], manifest["shard_size"]),
                fmt.n_shards(new["source"]["count"], new["shard_size"]),
            ],
            "geometry": new["geometry"],
        }
        group, manifest = fmt.open_manifest(url)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SIDECAR_WARNING)
        members = sorted(group.members(max_depth=None), key=lambda pa: pa[0])
    metas = {p: read_json(fs, f"{root}/{p}/zarr.json") for p, a in members if hasattr(a, "shape")}
    unnamed = [p for p, meta in metas.items() if meta.get("dimension_names") is None]
    stale = layout_version(manifest) < LAYOUT_VERSION or "geometry" not in manifest
    changed = bool(unnamed) or stale or resharded is not None or resumed
    changed = changed or not consolidated_current(fs, root, [p for p, _ in members], metas)
    if changed:
        with store_writes(url, f"upgrade {url}"):
            for path in unnamed:
                shape = metas[path]["shape"]
                metas[path]["dimension_names"] = list(array_dims(path, list(shape)))
                write_json_atomic(fs, f"{root}/{path}/zarr.json", metas[path])
            if stale:  # the geometry it has is the one bytes give: recorded, nothing copied
                rw = open_root(url, "r+")
                rw.attrs[fmt.MANIFEST_KEY] = {
                    **manifest,
                    "layout_version": LAYOUT_VERSION,
                    "geometry": manifest.get("geometry") or geo["geometry"],
                }
            consolidate(url)
    stats_cached = fs.exists(f"{root}/stats")
    return {
        "url": url,
        "layout_version_before": before,
        "layout_version": LAYOUT_VERSION,
        "named_arrays": unnamed,
        "resharded": resharded,  # None: the data was not copied
        "finished_interrupted_upgrade": resumed,
        # the statistics cache is keyed by the shards' checksums: `lplkit stats` recomputes it
        "stats_need_recompute": bool(resharded and stats_cached),
        "consolidated": True,
        "changed": changed,
    }
