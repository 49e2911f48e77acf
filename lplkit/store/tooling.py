"""What makes a store open cleanly in zarr-python, xarray and dask, and the upgrade of older stores.

Layout version 2 (``manifest["layout_version"]``; absent = 1, stores written before it):

- every array carries ``dimension_names`` (``DIMENSION_NAMES``; the statistics arrays theirs), which
  ``xarray.open_zarr`` requires;
- a finished store holds **consolidated metadata** in its root ``zarr.json`` (written by
  ``finalize``, ``lplkit stats`` and ``lplkit upgrade``). zarr-python, xarray and dask then list the
  hierarchy from it instead of listing the directory, where the sidecars (``index.parquet``,
  ``index_parts/``, ``progress/``), which are not zarr nodes, would each raise a ``ZarrUserWarning``.

lplkit itself always opens with ``use_consolidated=False`` (``open_root``): a consolidated view can
lag a crashed writer, the directory cannot. The array data and the Parquet index are unchanged from
layout 1, which lplkit reads as before; ``lplkit upgrade STORE`` adds the metadata in place.

Layout version 3: shards sized in bytes (``manifest["geometry"]``, ``format.store_geometry``).
Readers take the geometry from the manifest, so layouts 1-2 (row-sized shards) open unchanged;
``lplkit upgrade`` copies their arrays into the new geometry (``lplkit.store.reshard``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from lplkit.errors import StoreCorruptError, StoreError
from lplkit.store import format as fmt
from lplkit.store.sidecar import is_local, read_json, url_to_fs, write_json_atomic

if TYPE_CHECKING:
    import zarr

__all__ = [
    "DIMENSION_NAMES",
    "LAYOUT_VERSION",
    "consolidate",
    "layout_version",
    "open_root",
    "require_writable",
    "stats_dimension_names",
    "store_writes",
    "upgrade_store",
]

LAYOUT_VERSION = fmt.LAYOUT_VERSION
_MOMENT_DIMS = ("sample", "moment", "channel", "y", "x")
#: dimension names of the store's arrays (statistics arrays: `lplkit.stats.storage`).
DIMENSION_NAMES: dict[str, tuple[str, ...]] = {
    fmt.MOMENTS: _MOMENT_DIMS,
    fmt.MOMENTS_FLIP: _MOMENT_DIMS,
    fmt.LABELS: ("sample",),
}
# zarr warns once per non-zarr object when it lists a directory; lplkit's own listings expect them.
_SIDECAR_WARNING = r"Object at .* is not recognized as a component of a Zarr hierarchy"


def array_of(group: Any, name: str) -> zarr.Array:
    """`group[name]` as an array: anything else under that name means a damaged store."""
    import zarr

    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreCorruptError(
            f"{name!r} in the store is a {type(node).__name__}, not an array; re-encode into a "
            "new --out"
        )
    return node


def open_root(url: str, mode: str = "r") -> Any:
    """The store group as lplkit opens it: from the directory, never from consolidated metadata."""
    import zarr

    return zarr.open_group(str(url), mode=mode, use_consolidated=False)  # type: ignore[arg-type]


def layout_version(manifest: dict[str, Any]) -> int:
    """1 for stores written before dimension names and consolidated metadata, else the recorded one."""
    return int(manifest.get("layout_version", 1))


def consolidate(url: str) -> None:
    """(Re)write the consolidated metadata of the store at ``url`` (after any hierarchy change)."""
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SIDECAR_WARNING)
        # zarr notes that consolidated metadata is not (yet) in the v3 spec; zarr-python, xarray
        # and dask read it, and lplkit never depends on it (open_root)
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(str(url))


def require_writable(url: str, action: str) -> None:
    """`StoreError` (one line) when the local store at `url` cannot be written (a read-only mount,
    no write permission), checked before a command spends time on work it cannot save.
    Object stores are not probed: their write errors surface through `store_writes`."""
    fs, root = url_to_fs(url)
    if is_local(fs) and not os.access(root, os.W_OK):
        raise StoreError(
            f"cannot {action}: not writable (read-only file system or no permission); "
            "run on a writable copy or mount"
        )


@contextmanager
def store_writes(url: str, action: str) -> Iterator[None]:
    """Turn an OS error of the writes inside (read-only file system, permission, full disk) into
    one `StoreError` line naming the store and the action."""
    try:
        yield
    except StoreError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StoreError(
            f"cannot {action}: writing to {url} failed ({reason}); run on a writable copy or mount"
        ) from None


def stats_dimension_names(name: str, ndim: int) -> tuple[str, ...]:
    """Dimension names of a statistics array (``stats/run-*/...``, see ``lplkit.stats.storage``):
    ``items`` (item, field), per-channel vectors (channel,), ``hist_counts`` (channel, bin)."""
    if name == "items":
        return ("item", "field")
    if name == "hist_counts":
        return ("channel", "bin")
    return ("channel",) if ndim == 1 else tuple(f"{name}_dim{i}" for i in range(ndim))


def _array_dims(path: str, shape: list[int]) -> tuple[str, ...]:
    name = path.rsplit("/", 1)[-1]
    if name in DIMENSION_NAMES and "/" not in path:
        return DIMENSION_NAMES[name]
    return stats_dimension_names(name, len(shape))


def upgrade_store(url: str, shard_mb: float | None = None) -> dict[str, Any]:
    """Bring a finished store to the current layout in place: from layout <= 2 (or with
    `shard_mb` given and not the store's) its arrays are copied into shards sized in bytes
    (`lplkit.store.reshard`: bounded memory, interruption-safe, markers and index parts rewritten),
    then ``dimension_names`` on every array that lacks them, ``layout_version`` and ``geometry`` in
    the manifest, consolidated metadata. Values, index.parquet and the row order are unchanged.
    Idempotent: a store already at the layout is not written at all (``changed`` False), so a
    read-only one is fine; returns what was done (JSON-able)."""
    from lplkit.store import reshard
    from lplkit.store.lock import StoreLock

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
    before = layout_version(manifest)
    geo = reshard.new_geometry(manifest, shard_mb)
    same = all(manifest[k] == geo[k] for k in ("shard_size", "chunk_size"))
    resharded = None
    if (before < 3 or shard_mb is not None) and not same:
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
        warnings.filterwarnings("ignore", message=_SIDECAR_WARNING)
        members = sorted(group.members(max_depth=None), key=lambda pa: pa[0])
    metas = {p: read_json(fs, f"{root}/{p}/zarr.json") for p, a in members if hasattr(a, "shape")}
    unnamed = [p for p, meta in metas.items() if meta.get("dimension_names") is None]
    stale = layout_version(manifest) < LAYOUT_VERSION or "geometry" not in manifest
    changed = bool(unnamed) or stale or resharded is not None or resumed
    changed = changed or not _consolidated_current(fs, root, [p for p, _ in members], metas)
    if changed:
        with store_writes(url, f"upgrade {url}"):
            for path in unnamed:
                shape = metas[path]["shape"]
                metas[path]["dimension_names"] = list(_array_dims(path, list(shape)))
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


def _consolidated_current(
    fs: Any, root: str, paths: list[str], arrays: dict[str, dict[str, Any]]
) -> bool:
    """Whether the root's consolidated metadata lists exactly `paths` and holds each array's
    current metadata (`arrays`: path -> its zarr.json)."""
    consolidated = (read_json(fs, f"{root}/zarr.json").get("consolidated_metadata") or {}).get(
        "metadata"
    )
    if not isinstance(consolidated, dict) or set(consolidated) != set(paths):
        return False
    return all(consolidated[p] == meta for p, meta in arrays.items())
