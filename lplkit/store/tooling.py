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
``lplkit upgrade`` copies their arrays into the new geometry (``lplkit.store.reshard``); ``lplkit.store.upgrade`` does both.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from lplkit.errors import StoreCorruptError, StoreError
from lplkit.store import format as fmt
from lplkit.store.sidecar import is_local, read_json, url_to_fs

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
SIDECAR_WARNING = r"Object at .* is not recognized as a component of a Zarr hierarchy"


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
        warnings.filterwarnings("ignore", message=SIDECAR_WARNING)
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


def array_dims(path: str, shape: list[int]) -> tuple[str, ...]:
    name = path.rsplit("/", 1)[-1]
    if name in DIMENSION_NAMES and "/" not in path:
        return DIMENSION_NAMES[name]
    return stats_dimension_names(name, len(shape))


def consolidated_current(
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
