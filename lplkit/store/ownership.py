"""Which folders an encode may write into: lplkit never deletes or overwrites what it did not write.

`--out` may be (a) absent, (b) an empty folder (a lone lock file of a killed encode counts as
empty), (c) an lplkit store (its `zarr.json` carries the `lplkit` manifest: resumed or refused
as a mismatch later), or (d) the half-created store an encode killed during creation leaves: a
zarr group without the manifest whose entries are only lplkit's arrays, each holding nothing but
its `zarr.json`. Anything else (a user's folder, a foreign zarr group, a file) is refused with one
line *before* the lock is taken, so nothing in it is touched.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from lplkit.errors import StoreError
from lplkit.store import format as fmt

_ARRAYS = (fmt.MOMENTS, fmt.MOMENTS_FLIP, fmt.LABELS)
# A group's zarr.json is a few hundred bytes; reading more than this means it is not lplkit's.
_MAX_GROUP_JSON = 16 << 20


def _names(fs: Any, path: str) -> list[str]:
    return sorted(posixpath.basename(str(p).rstrip("/")) for p in fs.ls(path, detail=False))


def _group_attrs(fs: Any, path: str) -> dict[str, Any] | None:
    """The attributes of the zarr group document at `path`, or None when it is not one."""
    try:
        if int(fs.size(path)) > _MAX_GROUP_JSON:
            return None
        with fs.open(path, "rb") as f:
            doc = json.loads(f.read().decode())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return None
    attrs = doc.get("attributes", {})
    return attrs if isinstance(attrs, dict) else None


def check_out_dir(fs: Any, root: str, url: str) -> None:
    """Raise `StoreError` unless `root` is absent, empty, an lplkit store or a half-created one."""
    if not fs.exists(root):
        return
    if fs.isfile(root):
        raise StoreError(f"{url} is a file, not a store directory; choose another --out")
    names = [n for n in _names(fs, root) if n != fmt.LOCK_FILE]
    if not names:
        return
    why = f"it holds {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
    if "zarr.json" in names:
        attrs = _group_attrs(fs, f"{root}/zarr.json")
        if attrs is None:
            why = "its zarr.json is not a readable zarr group (damaged?)"
        elif fmt.MANIFEST_KEY in attrs:
            return  # an lplkit store: the writer validates the manifest and compares settings
        elif set(names) <= {"zarr.json", *_ARRAYS} and all(
            _names(fs, f"{root}/{a}") == ["zarr.json"] for a in names if a != "zarr.json"
        ):
            return  # arrays created, manifest not yet written: nothing but lplkit's metadata
        else:
            why = "it is a zarr group without an lplkit manifest, holding " + ", ".join(names[:5])
    raise StoreError(
        f"{url} exists and is not an lplkit store ({why}); lplkit writes only into a new or empty "
        "folder or its own store and never deletes other files: choose another --out"
    )
