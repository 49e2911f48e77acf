"""The `stats/` group of a latent store: atomic (versioned) writing, reading, and the content hash.

Layout (Zarr v3, inside the store group)::

    stats/                        group; attrs["lplkit_stats"] = {"format": 1, "current": "run-..."}
      run-<UTC time>-<hex>/       one complete run; attrs["lplkit_stats"] = metadata (provenance +
                                  summary, validated by schemas/stats.schema.json's "meta")
        items                     (n, 2) int64 (position, flip) of the items used
        latent_mean, latent_std   (C,) float64
        layers/<i>/               one group per tapped decoder layer, attrs = {name, channels, ...}
          mean std q_low q_high   (C,) float64
          hist_counts             (C, bins + 2) int64; hist_lo hist_hi hist_vmin hist_vmax (C,)

Atomicity: a run is written completely under a fresh `run-*` name first; only then does the
`current` pointer (one small `zarr.json`, replaced atomically by zarr's LocalStore and by a single
object PUT on object stores) switch to it, and older runs are deleted. A crash at any point leaves
either the old complete run or the new complete run current, never a half one; orphans from a
crashed run are removed by the next run.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any, Literal

import numpy as np
import torch

from lplkit.errors import LplkitError, StoreCorruptError, StoreError, StoreMismatchError
from lplkit.stats.accumulators import ChannelHistogram
from lplkit.stats.compute import LayerStats, StoreStats
from lplkit.store import format as fmt
from lplkit.store.buckets import bucket_url, buckets_of
from lplkit.store.format import MANIFEST_KEY
from lplkit.store.markers import scan_markers
from lplkit.store.sidecar import url_to_fs
from lplkit.store.tooling import consolidate, stats_dimension_names
from lplkit.validation import require_valid

__all__ = ["STATS_FORMAT", "STATS_GROUP", "load_stats", "store_content_hash", "write_stats"]

STATS_GROUP = "stats"
STATS_KEY = "lplkit_stats"
STATS_FORMAT = 1
_LAYER_ARRAYS = ("mean", "std", "q_low", "q_high")
_HIST_ARRAYS = ("lo", "hi", "vmin", "vmax")


def store_content_hash(url: str, manifest: dict[str, Any]) -> str:
    """sha256 of the store's identity and every shard's data checksums (from the progress markers).

    Hashes `{"identity": manifest identity fields, "shards": [marker checksums + index part sha256]}`
    as canonical JSON: it changes when any stored byte or the index changes, not when a shard is
    merely rewritten with the same content. Raises `StoreError` if a shard has no marker.
    """

    buckets = buckets_of(manifest)
    if buckets is not None:  # a bucketed store: its identity and every bucket's hash
        parts = [store_content_hash(bucket_url(str(url), b.id),
                                    fmt.read_manifest(bucket_url(str(url), b.id)) or {})
                 for b in buckets]  # fmt: skip
        identity = {k: manifest.get(k) for k in fmt.IDENTITY_FIELDS}
        blob = json.dumps({"identity": identity, "buckets": parts}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()
    fs, root = url_to_fs(str(url))
    count, size = int(manifest["source"]["count"]), int(manifest["shard_size"])
    scan = scan_markers(fs, root, count, size)  # one listing, each marker read once
    pending = scan.pending()
    if pending:
        raise StoreError(
            f"{url}: shard {pending[0]} has no sound completion marker; finish the store with "
            "`lplkit encode` before computing statistics"
        )
    shards = [
        {"checksums": m.get("checksums"), "index": m.get("index_part_sha256")}
        for _, m in sorted(scan.markers.items())
    ]
    identity = {k: manifest.get(k) for k in fmt.IDENTITY_FIELDS}
    blob = json.dumps({"identity": identity, "shards": shards}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _open_root(url: str, mode: Literal["r", "r+", "a", "w", "w-"]) -> Any:
    import zarr

    # never from consolidated metadata: it may lag a crashed writer (lplkit.store.tooling)
    return zarr.open_group(str(url), mode=mode, use_consolidated=False)


def _array(group: Any, name: str, values: np.ndarray) -> None:
    """Write a small whole array (one chunk, default codec)."""

    arr = group.create_array(
        name, shape=values.shape, dtype=values.dtype, chunks=values.shape or (1,),
        dimension_names=stats_dimension_names(name, values.ndim),
    )  # fmt: skip
    arr[...] = values


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def write_stats(url: str, stats: StoreStats, meta: dict[str, Any]) -> str:
    """Write `stats` with metadata `meta` as the store's current statistics; returns the run name.

    Call on one process only (rank 0 under torchrun).
    """
    root = _open_root(url, "r+")
    group = root.require_group(STATS_GROUP)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"run-{stamp}-{secrets.token_hex(4)}"
    run = group.create_group(name)
    items = stats.items if stats.items is not None else np.zeros((0, 2), np.int64)
    _array(run, "items", np.asarray(items, dtype=np.int64).reshape(-1, 2))
    _array(run, "latent_mean", _np(stats.latent_mean).astype(np.float64))
    _array(run, "latent_std", _np(stats.latent_std).astype(np.float64))
    layers = run.create_group("layers")
    for i, layer in enumerate(stats.layers):
        lg = layers.create_group(str(i))
        for field in _LAYER_ARRAYS:
            _array(lg, field, _np(getattr(layer, field)).astype(np.float64))
        if layer.hist is not None:
            _array(lg, "hist_counts", _np(layer.hist.counts).astype(np.int64))
            for field in _HIST_ARRAYS:
                _array(lg, f"hist_{field}", _np(getattr(layer.hist, field)).astype(np.float64))
        lg.attrs.update(layer.scalars())
    run.attrs[STATS_KEY] = {**meta, "run": name}
    # The switch: everything above is complete before the pointer names it.
    group.attrs[STATS_KEY] = {"format": STATS_FORMAT, "current": name}
    for old in [k for k in group.group_keys() if k != name]:
        del group[old]

    consolidate(url)  # zarr/xarray/dask list the new stats/ from the consolidated metadata
    return name


def _tensor(group: Any, name: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(group[name][...]))


def load_stats(store_or_url: Any, *, check_fresh: bool = False) -> StoreStats | None:
    """The store's current statistics, or None when `lplkit stats` has not been run on it.

    Args:
        store_or_url: a store URL / path, or an object with a `.url` attribute (`LatentStore`).
        check_fresh: recompute the store's content hash and raise `StoreMismatchError` when it
            differs from the one the statistics were computed on (the store changed since).

    Returns:
        `StoreStats` (float64 CPU tensors; `.feature_stats` gives the LPL's per-layer records),
        with `.meta` the run's metadata.
    """

    url = getattr(store_or_url, "url", store_or_url)
    try:
        return _load_stats(str(url), check_fresh)
    except LplkitError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        # attrs and arrays of stats/ are untrusted input: a damaged group must not crash a reader
        raise StoreCorruptError(
            f"the statistics in {url}/{STATS_GROUP} are damaged ({type(exc).__name__}: {exc}); "
            f"re-run `lplkit stats` on the store (or delete its {STATS_GROUP}/ group)"
        ) from None


def _load_stats(url: str, check_fresh: bool) -> StoreStats | None:
    try:
        root = _open_root(str(url), "r")
        group = root[STATS_GROUP]
    except (FileNotFoundError, KeyError):
        return None
    pointer = group.attrs.get(STATS_KEY)
    if not isinstance(pointer, dict) or pointer.get("current") not in group:
        return None
    run = group[pointer["current"]]
    layers = []
    layer_groups = run["layers"]
    for key in sorted(layer_groups.group_keys(), key=int):
        lg = layer_groups[key]
        a = dict(lg.attrs)
        hist = None
        if "hist_counts" in lg:
            edges = {f: _tensor(lg, f"hist_{f}") for f in _HIST_ARRAYS}
            hist = ChannelHistogram(
                edges["lo"], edges["hi"], _tensor(lg, "hist_counts"), edges["vmin"], edges["vmax"]
            )
        layers.append(
            LayerStats(
                name=a["name"],
                channels=int(a["channels"]),
                height=int(a["height"]),
                width=int(a["width"]),
                upsample_factor=int(a["upsample_factor"]),
                count=int(a["count"]),
                **{f: _tensor(lg, f) for f in _LAYER_ARRAYS},
                q_error_bound=hist.bin_width
                if hist is not None
                else torch.zeros(int(a["channels"])),
                outlier_share=float(a["outlier_share"]),
                hist=hist,
            )
        )

    meta = require_valid(
        run.attrs[STATS_KEY], "stats", what=f"{url}/{STATS_GROUP}/{pointer['current']} attrs",
        error=StoreCorruptError, fix="re-run `lplkit stats` on the store",
    )  # fmt: skip
    meta = dict(meta)
    if check_fresh:
        now = store_content_hash(str(url), dict(root.attrs[MANIFEST_KEY]))
        if now != meta.get("store", {}).get("content_hash"):
            raise StoreMismatchError(
                f"{url}: the statistics in stats/{pointer['current']} were computed on other store "
                "content (content hash changed); re-run `lplkit stats` on this store"
            )
    return StoreStats(
        latent_mean=_tensor(run, "latent_mean"),
        latent_std=_tensor(run, "latent_std"),
        latent_count=int(meta.get("latent", {}).get("count", 0)),
        layers=layers,
        meta=meta,
        items=np.asarray(run["items"][...]),
    )
