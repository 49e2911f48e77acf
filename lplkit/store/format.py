"""Store layout: names, dtypes, chunk/shard geometry, the manifest and the Parquet index schema.

A store is a Zarr v3 group (see docs/store-format.md and schemas/store.schema.json)::

    STORE/
      zarr.json                 group; attrs["lplkit"] = manifest
      moments/                  (N, 2, C, h, w): [:, 0] = posterior mean, [:, 1] = std (raw, unscaled)
      moments_flip/             optional, same shape: moments of the horizontally flipped image
      labels/                   (N,) int32, -1 = no label
                                (dimension_names on every array; consolidated metadata when finished)
      index.parquet             one row per position (written by finalize)
      index_parts/shard-XXXXX.parquet   per-shard index rows (written with the shard)
      progress/shard-XXXXX.json         per-shard completion marker with checksums
      .lplkit-lock.json                 writer lock while an encode runs

Row `i` of every array is sample `i` of the source (skipped samples keep their row, filled with zeros),
so shard `s` covers positions `[s*S, min((s+1)*S, N))` for every rank without coordination.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import posixpath
from typing import Any

import numpy as np

from lplkit import __version__
from lplkit.errors import StoreCorruptError, StoreError, StoreNotFoundError
from lplkit.store.sidecar import url_to_fs
from lplkit.validation import schema_problems

FORMAT_VERSION = 1
# 2: dimension_names on every array + consolidated metadata (lplkit.store.tooling); absent = 1
# 3: shards sized in bytes, the choice recorded in manifest["geometry"] (`store_geometry`)
LAYOUT_VERSION = 3
MANIFEST_KEY = "lplkit"

MOMENTS = "moments"
MOMENTS_FLIP = "moments_flip"
LABELS = "labels"
INDEX_FILE = "index.parquet"
INDEX_PARTS_DIR = "index_parts"
PROGRESS_DIR = "progress"
LOCK_FILE = ".lplkit-lock.json"
RESHARD_DIR = ".reshard"  # `lplkit upgrade`'s staging (lplkit.store.reshard)
RESHARD_READY = RESHARD_DIR + "/READY.json"  # present: a swap into place is unfinished

DTYPES = ("float16", "bfloat16", "float32")
DEFAULT_DTYPE = "float16"
# Layouts 1-2 sized shards and chunks in rows (1024 / 64: 1 MiB shards at 4x8x8, 128 MiB at 512 px
# with flips); the defaults of a caller that passes rows without a chunk size.
DEFAULT_CHUNK_SIZE = 64
DEFAULT_SHARD_SIZE = 1024
MIB = 1 << 20
# Layout 3 sizes them in bytes (`store_geometry`). Inner chunk: 64 rows, the chunk store_read
# measured, but at most 1 MiB of moments (that measurement's 64 rows at 4x32x32 fp16; docs/
# benchmarks.md "Codecs and inner chunks": windowed reads 22.4k samples/s at 1 MiB chunks vs 12.0k at
# 256 KiB and 32.5k at 4 MiB, which makes a window's block shuffle 4x coarser). Not more rows at
# small latents: 1 MiB = 1,024-row chunks at 4x8x8 made store_scale's cold first batch 13x slower
# (a batch of 256 random rows reads ~every chunk; docs/results/store_geometry_bytes_1mib_chunks.json).
DEFAULT_CHUNK_BYTES = MIB
MAX_CHUNK_ROWS = DEFAULT_CHUNK_SIZE
# Shard: 128 MiB of rows (moments + flip copy + label). It keeps the measured 1024-row shard at the
# largest shape issue #27 targets (ImageNet 512 px with flips: 128 KiB a row) and grows the 1 MiB
# shards of small latents (4x8x8) 128x: MosaicML streaming, litdata and WebDataset use 64 MB-1 GB.
# It bounds what a crash loses (one shard per rank) and what encode holds (float32 shard buffers:
# ~2x the stored bytes, one filling + one queued for the writer).
DEFAULT_SHARD_MB = 128.0
MAX_SHARD_MB = float(1 << 16)
# Lossless fp16 latents compress ~1.1x at best, and decompression costs read throughput: no codec.
DEFAULT_CODEC = "none"
CODECS = ("none", "zstd", "blosc-zstd")

# Bounds on sizes read from a store's files (a damaged manifest must not make lplkit loop or
# allocate without end): 2**40 positions, latent sides up to 65536, metadata files up to 16 MiB.
MAX_COUNT = 1 << 40
MAX_DIM = 1 << 16
MAX_METADATA_BYTES = 16 << 20

# Fields that must agree between an existing store and a new request (the stale-cache guard).
IDENTITY_FIELDS = (
    "format_version",
    "autoencoder",
    "resolution",
    "crop",
    "latent_shape",
    "dtype",
    "flips",
    "shard_size",
    "source",
    "buckets",  # a bucketed store's root (lplkit.store.buckets): sizes, rows, starts
    "bucket",  # one bucket's store: {id, size, start}
)

INDEX_COLUMNS = (
    "position",
    "key",
    "label",
    "caption",
    "orig_width",
    "orig_height",
    "crop_box",
    "status",
    "reason",
)


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype zarr stores: bfloat16 is not a zarr dtype, so its bit pattern goes in uint16."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return np.dtype("uint16") if dtype == "bfloat16" else np.dtype(dtype)


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> stored representation. bfloat16 rounds to nearest-even like `torch.bfloat16`:

    bits16 = (bits32 + 0x7FFF + ((bits32 >> 16) & 1)) >> 16, with NaN kept a (quiet) NaN.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "float32":
        return x
    if dtype == "float16":
        import torch  # numpy's float16 cast is ~10x slower than torch's (F16C); same IEEE rounding

        return (
            torch.from_numpy(x).to(torch.float16).numpy()
        )  # overflow -> inf, reported by the writer
    bits = x.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def from_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """Stored representation -> float32 (bfloat16: bits16 << 16 reinterpreted as float32)."""
    if dtype == "bfloat16":
        return (np.asarray(x, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype == "float16":
        import torch

        return torch.from_numpy(np.ascontiguousarray(x)).float().numpy()
    return np.asarray(x).astype(np.float32, copy=False)


def finite_rows(stored: np.ndarray, dtype: str) -> np.ndarray:
    """Per sample (axis 0): True when every stored value is finite (bfloat16: exponent not all ones)."""
    n = len(stored)
    if dtype == "bfloat16":
        return ((np.asarray(stored) & 0x7F80) != 0x7F80).reshape(n, -1).all(axis=1)
    if dtype == "float16":
        import torch

        return (
            torch.isfinite(torch.from_numpy(np.ascontiguousarray(stored)))
            .reshape(n, -1)
            .all(1)
            .numpy()
        )
    return np.isfinite(stored).reshape(n, -1).all(axis=1)


def chunk_size_for(shard_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Inner chunk size: at most the shard size and a divisor of it (zarr needs shards % chunks == 0)."""
    chunk = max(1, min(chunk_size, shard_size))
    while shard_size % chunk:
        chunk -= 1
    return chunk


def row_bytes(latent_shape: tuple[int, ...] | list[int], dtype: str, flips: bool) -> int:
    """Stored bytes of one row over every array: moments `2*C*h*w*itemsize` (twice with the flip
    copy) + 4 (the int32 label)."""
    moments = 2 * math.prod(int(v) for v in latent_shape) * storage_dtype(dtype).itemsize
    return moments * (2 if flips else 1) + 4


def store_geometry(
    latent_shape: tuple[int, ...] | list[int],
    dtype: str,
    flips: bool,
    count: int,
    *,
    shard_mb: float | None = None,
    shard_size: int | None = None,
    chunk_size: int | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, Any]:
    """Rows per shard and per inner chunk of a new store: `{"shard_size", "chunk_size", "geometry"}`
    (geometry = how they were chosen, recorded in the manifest).

    In bytes (layout 3): chunk = chunk_bytes // moment-row bytes rows, in [1, 64]; shard = the largest
    multiple of the chunk within `shard_mb` MiB of rows (`row_bytes`), at least one chunk, at most
    the chunks that cover `count` rows (a small store is one shard, not one 128 MiB index).
    `shard_size` (rows) overrides `shard_mb`; `chunk_size` (rows) overrides `chunk_bytes`; a chunk
    always divides the shard. Deterministic from the manifest's fields: every rank and every
    resume derives the same shards, shard s = rows `[s*S, (s+1)*S)`.
    """
    per_row = row_bytes(latent_shape, dtype, flips)
    moment_row = 2 * math.prod(int(v) for v in latent_shape) * storage_dtype(dtype).itemsize
    by_bytes = max(1, min(MAX_CHUNK_ROWS, int(chunk_bytes) // moment_row))
    chunk = int(chunk_size) if chunk_size is not None else by_bytes
    if shard_size is not None:
        shard = int(shard_size)
        geometry: dict[str, Any] = {"rule": "rows"}
    else:
        mb = DEFAULT_SHARD_MB if shard_mb is None else float(shard_mb)
        fit = max(1, int(mb * MIB) // per_row)
        chunk = min(chunk, fit, max(1, int(count)))  # a 200-row store: one 200-row chunk
        shard = max(chunk, fit // chunk * chunk)
        shard = min(shard, max(chunk, -(-int(count) // chunk) * chunk))
        geometry = {"rule": "bytes", "shard_mb": mb}
    geometry.update(
        chunk_bytes=None if chunk_size is not None else int(chunk_bytes), row_bytes=per_row
    )
    return {
        "shard_size": shard,
        "chunk_size": chunk_size_for(shard, chunk),
        "geometry": geometry,
    }


def array_geometry(manifest: dict[str, Any], row_nbytes: int) -> tuple[int, int]:
    """`(rows per shard, rows per inner chunk)` for an array of `row_nbytes` bytes a row added to
    the store of `manifest` (e.g. text-encoder outputs): its shards are the store's (shard s =
    rows `[s*S, (s+1)*S)` of every array, one unit of writing and resume), its chunks follow the
    rule of `store_geometry` (64 rows, at most `chunk_bytes`), cut to divide the shard."""
    shard = int(manifest["shard_size"])
    chunk_bytes = (manifest.get("geometry") or {}).get("chunk_bytes") or DEFAULT_CHUNK_BYTES
    chunk = max(1, min(MAX_CHUNK_ROWS, int(chunk_bytes) // max(1, int(row_nbytes))))
    return shard, chunk_size_for(shard, chunk)


def n_shards(count: int, shard_size: int) -> int:
    """Number of shards covering `count` positions."""
    return -(-count // shard_size)


def shard_range(shard: int, count: int, shard_size: int) -> tuple[int, int]:
    """Positions `[start, stop)` of `shard`."""
    if not 0 <= shard < n_shards(count, shard_size):
        raise IndexError(f"shard {shard} out of range (store has {n_shards(count, shard_size)})")
    start = shard * shard_size
    return start, min(start + shard_size, count)


def shard_name(shard: int) -> str:
    """`shard-00042`: the stem of a shard's marker and index part."""
    return f"shard-{shard:05d}"


def marker_path(root: str, shard: int) -> str:
    return posixpath.join(root, PROGRESS_DIR, shard_name(shard) + ".json")


def index_part_path(root: str, shard: int) -> str:
    return posixpath.join(root, INDEX_PARTS_DIR, shard_name(shard) + ".parquet")


def array_names(manifest: dict[str, Any]) -> tuple[str, ...]:
    """Arrays present in a store with this manifest."""
    return (MOMENTS, MOMENTS_FLIP, LABELS) if manifest["flips"] else (MOMENTS, LABELS)


def sha256_array(x: np.ndarray) -> str:
    """sha256 of the C-ordered bytes of a (decoded, stored-dtype) array."""
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def new_manifest(
    *,
    autoencoder: dict[str, Any],
    resolution: int,
    latent_shape: tuple[int, int, int] | list[int],
    source: dict[str, Any],
    crop: str = "adm_center",
    dtype: str = DEFAULT_DTYPE,
    flips: bool = False,
    shard_size: int | None = None,
    chunk_size: int | None = None,
    codec: str = DEFAULT_CODEC,
    classes: list[str] | None = None,
    shard_mb: float | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict[str, Any]:
    """A complete manifest for `StoreWriter.create_or_resume` (source = {id, split, revision, count};
    classes = the names of labels 0..K-1, or None when the source has none). Shards hold
    `shard_mb` MiB (default `DEFAULT_SHARD_MB`) unless `shard_size` rows are given; see
    `store_geometry`."""

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    geo = store_geometry(
        latent_shape,
        dtype,
        flips,
        int(source["count"]),
        shard_mb=shard_mb,
        shard_size=shard_size,
        chunk_size=chunk_size,
        chunk_bytes=chunk_bytes,
    )
    return {
        "format_version": FORMAT_VERSION,
        "layout_version": LAYOUT_VERSION,
        "autoencoder": dict(autoencoder),
        "resolution": int(resolution),
        "crop": crop,
        "latent_shape": [int(v) for v in latent_shape],
        "dtype": dtype,
        "storage_dtype": storage_dtype(dtype).name,
        "flips": bool(flips),
        "source": {
            "id": str(source["id"]),
            "split": source.get("split"),
            "revision": source.get("revision"),
            "count": int(source["count"]),
        },
        "classes": None if classes is None else [str(c) for c in classes],
        "shard_size": geo["shard_size"],
        "chunk_size": geo["chunk_size"],
        "geometry": geo["geometry"],
        "codec": codec,
        "lplkit_version": __version__,
        "completed": False,
        "counts": None,
    }


def complete_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill the fields a caller may leave out (format version, chunk size, ...) with defaults."""

    m = copy.deepcopy(manifest)
    missing = [k for k in ("autoencoder", "resolution", "latent_shape", "source") if k not in m]
    if missing:
        raise ValueError(f"manifest lacks required fields {missing}")
    m.setdefault("format_version", FORMAT_VERSION)
    m.setdefault("crop", "adm_center")
    m.setdefault("dtype", DEFAULT_DTYPE)
    m["storage_dtype"] = storage_dtype(m["dtype"]).name
    m.setdefault("flips", False)
    m.setdefault("layout_version", LAYOUT_VERSION)
    if "shard_size" not in m:  # sized in bytes (layout 3)
        m.update(
            store_geometry(
                m["latent_shape"],
                m["dtype"],
                m["flips"],
                int(m["source"]["count"]),
                chunk_size=m.get("chunk_size"),
            )
        )
    m["chunk_size"] = chunk_size_for(
        int(m["shard_size"]), int(m.get("chunk_size", DEFAULT_CHUNK_SIZE))
    )
    m.setdefault("codec", DEFAULT_CODEC)
    m.setdefault("lplkit_version", __version__)
    m["latent_shape"] = [int(v) for v in m["latent_shape"]]
    src = m["source"]
    m["source"] = {
        "id": str(src["id"]),
        "split": src.get("split"),
        "revision": src.get("revision"),
        "count": int(src["count"]),
    }
    m.setdefault("classes", None)
    m.setdefault("completed", False)
    m.setdefault("counts", None)
    return m


def identity_differences(existing: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Human-readable `field: stored X, requested Y` for every identity field that differs."""
    diffs = []
    for field in IDENTITY_FIELDS:
        old, new = existing.get(field), requested.get(field)
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                if old.get(key) != new.get(key):
                    diffs.append(
                        f"{field}.{key}: stored {old.get(key)!r}, requested {new.get(key)!r}"
                    )
        elif old != new:
            diffs.append(f"{field}: stored {old!r}, requested {new!r}")
    return diffs


def manifest_problems(m: Any) -> list[str]:
    """Problems of a manifest read from a store: readable checks, then schemas/store.schema.json."""
    if not isinstance(m, dict):
        return ["manifest is not a JSON object"]
    problems = []
    types: dict[str, type | tuple[type, ...]] = {
        "format_version": int,
        "autoencoder": dict,
        "resolution": int,
        "crop": str,
        "latent_shape": list,
        "dtype": str,
        "flips": bool,
        "source": dict,
        "shard_size": int,
        "chunk_size": int,
        "codec": str,
        "lplkit_version": str,
        "completed": bool,
    }
    for key, tp in types.items():
        if key not in m:
            problems.append(f"manifest field {key!r} is missing")
        elif not isinstance(m[key], tp) or (tp is int and isinstance(m[key], bool)):
            problems.append(f"manifest field {key!r} has the wrong type ({type(m[key]).__name__})")
    if problems:
        return problems
    if m["format_version"] != FORMAT_VERSION:
        problems.append(f"format_version {m['format_version']} is not {FORMAT_VERSION}")
    if m["dtype"] not in DTYPES:
        problems.append(f"dtype {m['dtype']!r} is not one of {DTYPES}")
    if len(m["latent_shape"]) != 3:
        problems.append(f"latent_shape {m['latent_shape']} is not [C, h, w]")
    if m["shard_size"] < 1 or m["chunk_size"] < 1 or m["shard_size"] % m["chunk_size"]:
        problems.append("shard_size must be a positive multiple of chunk_size")
    if not isinstance(m["source"].get("count"), int) or not 0 <= m["source"]["count"] <= MAX_COUNT:
        problems.append(f"source.count must be an integer in [0, {MAX_COUNT}]")
    if not all(isinstance(v, int) and 1 <= v <= MAX_DIM for v in m["latent_shape"]):
        problems.append(f"latent_shape entries must be integers in [1, {MAX_DIM}]")
    if m["shard_size"] > MAX_COUNT:
        problems.append(f"shard_size must be at most {MAX_COUNT}")
    problems += _autoencoder_factor_problems(m["autoencoder"])
    classes = m.get("classes")
    if classes is not None and (
        not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
    ):
        problems.append("classes must be a list of names or null")
    problems += _bucket_problems(m)
    if m["completed"] and not isinstance(m.get("counts"), dict):
        problems.append("a completed manifest must have counts {total, ok, skipped}")
    if problems:
        return problems

    # The full schema (nested fields, enums, ranges) after the readable checks above.
    return [f"manifest {p}" for p in schema_problems(m, "store")]


def _bucket_problems(m: dict[str, Any]) -> list[str]:
    """A bucketed root's `buckets`: ids 0..n-1, rows that tile [0, source.count) in order."""
    buckets = m.get("buckets")
    if buckets is None:
        return []
    if (
        not isinstance(buckets, list)
        or not buckets
        or not all(isinstance(b, dict) for b in buckets)
    ):
        return ["buckets must be a non-empty list of {id, size, latent_shape, rows, start}"]
    start = 0
    for i, b in enumerate(buckets):
        if not all(isinstance(b.get(k), int) and not isinstance(b.get(k), bool)
                   for k in ("id", "rows", "start")):  # fmt: skip
            return [f"bucket {i}: id, rows and start must be integers"]
        if b["id"] != i or b["start"] != start or b["rows"] < 0:
            return [f"bucket {i}: id {b['id']}, start {b['start']}, rows {b['rows']} do not tile "
                    "the positions in order"]  # fmt: skip
        start += b["rows"]
    count = m["source"].get("count")
    if start != count:
        return [f"the buckets hold {start} rows, source.count is {count}"]
    return []


def _autoencoder_factor_problems(ae: dict[str, Any]) -> list[str]:
    """The latent normalization comes from these: NaN, Inf or a zero scale trains on garbage."""
    out = []
    for key in ("scaling_factor", "shift_factor"):
        v = ae.get(key)
        if v is None:
            continue
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            out.append(f"autoencoder.{key} {v!r} is not a finite number")
        elif key == "scaling_factor" and v == 0:
            out.append("autoencoder.scaling_factor is 0 (every latent would normalize to 0)")
    return out


def layout_problem(array_metadata: dict[str, Any]) -> str | None:
    """What in a zarr array's metadata (`Array.metadata.to_dict()`) lplkit never writes and that
    changes how its bytes decode: a byte order other than little-endian in any codec (the data,
    or a shard index). Such an array passes every structural check but reads as garbage."""

    def walk(codecs: Any) -> str | None:
        for c in codecs if isinstance(codecs, list | tuple) else ():
            if not isinstance(c, dict):
                continue
            conf = c.get("configuration") or {}
            if c.get("name") == "bytes" and conf.get("endian", "little") != "little":
                return f"its data is stored with endian {conf.get('endian')!r}"
            found = walk(conf.get("codecs")) or walk(conf.get("index_codecs"))
            if found:
                return found
        return None

    return walk(array_metadata.get("codecs"))


def read_json_bounded(fs: Any, path: str, what: str, limit: int = MAX_METADATA_BYTES) -> Any:
    """Parse a JSON file read from a store, or raise ValueError saying what is wrong with it (too
    big, not UTF-8 JSON, nested too deep); FileNotFoundError propagates."""
    with fs.open(path, "rb") as f:
        raw = f.read(limit + 1)
    return parse_json_bounded(raw, what, limit)


def parse_json_bounded(raw: bytes, what: str, limit: int = MAX_METADATA_BYTES) -> Any:
    """`read_json_bounded` for bytes already read (ValueError saying what is wrong with them)."""
    if len(raw) > limit:
        raise ValueError(f"{what} is larger than {limit} bytes")
    try:
        return json.loads(raw.decode())
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to be lplkit's") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} is not valid JSON ({exc})") from None


def read_manifest(url: str) -> Any:
    """The manifest stored in `url`'s root zarr.json, read and parsed by lplkit with bounds before
    zarr touches it (zarr would raise RecursionError/JSONDecodeError on a damaged file).

    Raises FileNotFoundError when there is no zarr.json, ValueError naming what is wrong when it
    is not a readable zarr group document; returns None when the group has no manifest.
    """

    fs, root = url_to_fs(str(url))
    doc = read_json_bounded(fs, f"{root}/zarr.json", "zarr.json")
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        raise ValueError("zarr.json is not a zarr group document")
    attrs = doc.get("attributes", {})
    if not isinstance(attrs, dict):
        raise ValueError("zarr.json attributes are not a JSON object")
    return attrs.get(MANIFEST_KEY)


def require_store_path(url: str) -> None:
    """Raise `StoreNotFoundError` when nothing exists at `url`: a mistyped path is "not found",
    never reported as a damaged store."""
    fs, root = url_to_fs(str(url))
    if not fs.exists(root):
        raise StoreNotFoundError(
            f"no latent store at {url}: the path does not exist; check it "
            "(`lplkit encode --out PATH` creates a store)"
        )


def open_manifest(url: str, *, upgrading: bool = False) -> tuple[Any, dict[str, Any]]:
    """Open the store group read-only: `(zarr group, manifest dict)`. Raises StoreError when `url`
    is not an lplkit latent store or an `lplkit upgrade` of it stopped halfway through its swap
    (`upgrading` skips that check), StoreCorruptError when its metadata is damaged or the
    manifest invalid. zarr is imported here so importing this module stays light."""
    import zarr

    require_store_path(url)
    fs, root = url_to_fs(str(url))
    if not upgrading and fs.exists(posixpath.join(root, RESHARD_READY)):
        raise StoreError(
            f"{url}: an `lplkit upgrade` stopped while moving the resharded arrays into place; "
            f"re-run `lplkit upgrade {url}` to finish it"
        )
    not_store = f"{url} is not an lplkit latent store (no manifest); run `lplkit encode`"
    try:
        manifest = read_manifest(url)
    except FileNotFoundError:
        raise StoreError(not_store) from None
    except (ValueError, OSError) as exc:
        raise StoreCorruptError(
            f"{url}: the store metadata is damaged ({exc}); run `lplkit verify {url}`"
        ) from None
    if manifest is None:
        raise StoreError(not_store)
    problems = manifest_problems(manifest)
    if problems:
        raise StoreCorruptError(
            f"{url}: invalid manifest ({'; '.join(problems[:3])}); run `lplkit verify {url}`"
        )
    try:
        # never from consolidated metadata: it may lag a crashed writer (lplkit.store.tooling)
        group = zarr.open_group(url, mode="r", use_consolidated=False)
    except FileNotFoundError:
        raise StoreError(not_store) from None
    return group, dict(manifest)
