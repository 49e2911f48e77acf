"""`store_info()`: what a store holds and what it costs on disk (for `lplkit info`)."""

from __future__ import annotations

from typing import Any

from lplkit.errors import StoreCorruptError, StoreError
from lplkit.store import format as fmt
from lplkit.store.buckets import BUCKETS_DIR, Bucket, bucket_url, buckets_of
from lplkit.store.markers import scan_markers
from lplkit.store.sidecar import url_to_fs
from lplkit.store.text import bytes_per_row, text_entries
from lplkit.store.text import path as text_path
from lplkit.store.tooling import LAYOUT_VERSION, layout_version


def _du(fs: Any, path: str) -> int:
    try:
        return int(fs.du(path, total=True))
    except FileNotFoundError:
        return 0


def store_info(url: str) -> dict[str, Any]:
    """Manifest, sample counts, per-array logical/stored bytes and compression ratio, shard progress.

    Counts come from the manifest of a finalized store, otherwise from the completion markers.
    """
    url = str(url)
    group, manifest = fmt.open_manifest(url)  # validated: counts and sizes are bounded
    fs, root = url_to_fs(url)
    buckets = buckets_of(manifest)
    if buckets is not None:
        return _bucketed_info(url, manifest, buckets, fs, root)
    count, size = int(manifest["source"]["count"]), int(manifest["shard_size"])
    n_shards = fmt.n_shards(count, size)
    # Markers are found by one listing, so the work is bounded by the files, not by the count.
    done = list(scan_markers(fs, root, count, size).markers.values())
    if manifest.get("completed") and isinstance(manifest.get("counts"), dict):
        counts = dict(manifest["counts"])
    else:
        n_ok = sum(int(m["n_ok"]) for m in done)
        n_written = sum(int(m["stop"]) - int(m["start"]) for m in done)
        counts = {
            "total": count,
            "ok": n_ok,
            "skipped": n_written - n_ok,
            "pending": count - n_written,
        }
    arrays: dict[str, Any] = {}
    for name in fmt.array_names(manifest):
        try:
            arr = group[name]
        except Exception as exc:  # missing or damaged array metadata
            raise StoreCorruptError(
                f"{url}: array {name!r} is missing or has unreadable metadata ({type(exc).__name__}); run "
                f"`lplkit verify {url}`"
            ) from None
        if arr.shape[:1] != (count,):
            raise StoreCorruptError(
                f"{url}: array {name!r} holds {arr.shape[0]} rows but the manifest says {count}; "
                f"run `lplkit verify {url}`"
            )
        stored = _du(fs, f"{root}/{name}")
        logical = int(arr.nbytes)
        arrays[name] = {
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "chunks": list(arr.chunks),
            "shards": list(arr.shards) if arr.shards is not None else None,
            "logical_bytes": logical,
            "stored_bytes": stored,
            "compression_ratio": round(logical / stored, 4) if stored else None,
        }
    logical = sum(a["logical_bytes"] for a in arrays.values())
    stored = sum(a["stored_bytes"] for a in arrays.values())

    text = {}
    for name, entry in text_entries(manifest).items():
        text[name] = {
            **{
                k: entry.get(k)
                for k in (
                    "id",
                    "subfolder",
                    "revision",
                    "class",
                    "preset",
                    "layer",
                    "max_tokens",
                    "hidden_size",
                    "pooled_size",
                    "dtype",
                    "completed",
                    "counts",
                )
            },
            "bytes_per_row": bytes_per_row(entry),
            "stored_bytes": _du(fs, f"{root}/{text_path(name)}"),
        }
    layout = layout_version(manifest)
    return {
        "url": url,
        "manifest": manifest,
        "layout_version": layout,
        # zarr/xarray/dask tooling metadata (lplkit.store.tooling); lplkit reads either layout
        "upgrade": f"lplkit upgrade {url}" if layout < LAYOUT_VERSION else None,
        "counts": counts,
        "shards": {"total": n_shards, "complete": len(done)},
        "arrays": arrays,
        "text_encoders": text,
        "bytes": {
            "logical": logical,
            "stored": stored,
            "index": _du(fs, f"{root}/{fmt.INDEX_FILE}"),
            "compression_ratio": round(logical / stored, 4) if stored else None,
            "per_ok_sample": round(stored / counts["ok"], 1) if counts["ok"] else None,
        },
    }


def _bucketed_info(
    url: str, manifest: dict[str, Any], buckets: list[Bucket], fs: Any, root: str
) -> dict[str, Any]:
    """`store_info` of a bucketed store: each bucket's store, summed; `buckets` lists each one
    (size, latent shape, rows, start, counts, shards, stored bytes), `arrays` are named
    `buckets/<b>/<array>`."""
    per = []
    for b in buckets:
        try:
            per.append(store_info(bucket_url(url, b.id)))
        except StoreError as exc:
            raise StoreCorruptError(
                f"{url}: bucket {b.id} ({b.size[0]}x{b.size[1]}) is unreadable ({exc}); run "
                f"`lplkit verify {url}`"
            ) from None
    if manifest.get("completed") and isinstance(manifest.get("counts"), dict):
        counts = dict(manifest["counts"])
    else:
        counts = {k: sum(int(i["counts"].get(k, 0)) for i in per)
                  for k in ("total", "ok", "skipped", "pending")}  # fmt: skip
    arrays = {f"{BUCKETS_DIR}/{b.id}/{n}": a
              for b, i in zip(buckets, per, strict=True) for n, a in i["arrays"].items()}  # fmt: skip
    logical = sum(i["bytes"]["logical"] for i in per)
    stored = sum(i["bytes"]["stored"] for i in per)
    text = {}
    for name, entry in per[0]["text_encoders"].items():
        if all(name in i["text_encoders"] for i in per):
            text[name] = dict(
                entry,
                completed=all(i["text_encoders"][name]["completed"] for i in per),
                stored_bytes=sum(i["text_encoders"][name]["stored_bytes"] for i in per),
            )
    layout = layout_version(manifest)
    return {
        "url": url,
        "manifest": manifest,
        "layout_version": layout,
        "upgrade": None,
        "counts": counts,
        "shards": {k: sum(i["shards"][k] for i in per) for k in ("total", "complete")},
        "buckets": [
            dict(
                b.to_dict(),
                counts=i["counts"],
                shards=i["shards"],
                shard_size=i["manifest"]["shard_size"],
                chunk_size=i["manifest"]["chunk_size"],
                stored_bytes=i["bytes"]["stored"],
            )
            for b, i in zip(buckets, per, strict=True)
        ],
        "arrays": arrays,
        "text_encoders": text,
        "bytes": {
            "logical": logical,
            "stored": stored,
            "index": _du(fs, f"{root}/{fmt.INDEX_FILE}"),
            "compression_ratio": round(logical / stored, 4) if stored else None,
            "per_ok_sample": round(stored / counts["ok"], 1) if counts["ok"] else None,
        },
    }
