"""`verify_store()`: is a latent store complete and sound? And `repair_store()` for what is not.

Checks, in order (each problem names the shard when it has one, and the fix):

- manifest present and valid (schemas/store.schema.json), arrays present with the manifest's shape;
- every shard has a completion marker (else: missing/partial, an interrupted encode);
- per shard: every array's stored bytes hash to the marker's sha256 (bit rot, truncation, another
  writer), decode without error, moments finite with std >= 0, the index part (while there is one:
  finalize removes them once index.parquet holds their rows) matching the marker's sha256;
- every complete shard's index rows exist: in its part or in index.parquet (else the shards are
  `unindexed_shards`, which `repair_store` marks for re-encoding);
- the index: readable (pages' CRC32 checked), one row per position, ok count = markers' n_ok =
  manifest counts, labels array = index labels;
- the store is finalized (`completed`).

All-zero chunks are not stored by zarr (write_empty_chunks=False) and read back as the fill value, so
checking hashes of the decoded arrays never mistakes them for missing data.

`verify_store(url, read_data=False)` is the cheap structural check the trainer runs at start: no
array data is read; instead every shard with ok samples must have its moments shard file(s) stored
(one listing per array), plus the manifest, marker, index and count checks above. It catches
deleted shard files, missing/edited markers, manifest edits and a truncated index in about the time
it takes to read the markers; bit flips and NaN need the full check (`lplkit verify`).

Markers come from one scan (`scan_markers`: one listing, each read once). `workers` checks shards in
threads (same report as serial); `sample` reads the data of a seeded fraction of the shards only.

`repair_store` removes the markers of bad shards and clears `completed`, so re-running the same
`lplkit encode` command re-encodes exactly those shards and rebuilds index.parquet.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr

from lplkit.errors import StoreCorruptError
from lplkit.store import format as fmt
from lplkit.store import index as idx
from lplkit.store import text as txt
from lplkit.store.buckets import bucket_url, buckets_of
from lplkit.store.lock import StoreLock
from lplkit.store.markers import index_part_shards, scan_markers
from lplkit.store.sidecar import remove_if_exists, url_to_fs
from lplkit.store.text import text_entries
from lplkit.store.tooling import array_of

RERUN = "re-run the same `lplkit encode` command (it resumes)"
TEXT_PROBLEM = "text encoder "  # how a cached text encoder's problems start
_MISSING_SHOWN = 20  # missing shards named one by one; the rest are counted


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}"


@dataclass
class Problem:
    """One thing wrong with a store."""

    kind: str
    message: str
    shard: int | None = None
    fix: str = ""


@dataclass
class VerifyReport:
    """Result of `verify_store`: `ok` when there are no problems."""

    url: str
    n_shards: int = 0
    complete_shards: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: complete shards whose index rows exist nowhere (no index part, index.parquet unusable)
    unindexed_shards: list[int] = field(default_factory=list)
    #: `sample_shards`: {"fraction", "seed", "checked"}; None when every shard's data was read
    sample: dict[str, Any] | None = None
    #: a bucketed store (lplkit.store.buckets): each bucket's own report (its problems are also
    #: in `problems`, prefixed with the bucket)
    buckets: dict[int, VerifyReport] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_shards(self) -> list[int]:
        """Shards to re-encode (their markers are removed by `repair_store`)."""
        return sorted(
            {p.shard for p in self.problems if p.shard is not None and p.kind != "missing_shard"}
            | set(self.unindexed_shards)
        )

    def add(self, kind: str, message: str, *, shard: int | None = None, fix: str = "") -> None:
        self.problems.append(Problem(kind, message, shard, fix))

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "n_shards": self.n_shards,
            "complete_shards": self.complete_shards,
            "bad_shards": self.bad_shards,
            "problems": [asdict(p) for p in self.problems],
            "sample": self.sample,
            **(
                {
                    "buckets": {
                        str(b): {"bad_shards": r.bad_shards, "n_shards": r.n_shards}
                        for b, r in self.buckets.items()
                    }
                }
                if self.buckets
                else {}
            ),
        }


def _bad_shard_fix(url: str, shard: int) -> str:
    return (
        f"run `lplkit verify {url} --repair` (or delete {fmt.PROGRESS_DIR}/{fmt.shard_name(shard)}.json), "
        f"then {RERUN} to re-encode shard {shard}"
    )


def sample_shards(shards: list[int], fraction: float, seed: int) -> list[int]:
    """The shards `--sample FRACTION` checks: ceil(fraction * len(shards)) of them, drawn without
    replacement by numpy's PCG64 seeded with `seed` (the same store and seed give the same ones)."""
    k = min(len(shards), math.ceil(fraction * len(shards)))
    rng = np.random.default_rng(seed)
    return sorted(int(s) for s in rng.choice(np.asarray(shards, dtype=np.int64), k, replace=False))


def verify_store(
    url: str,
    *,
    checksums: bool = True,
    read_data: bool = True,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
    sample: float | None = None,
    seed: int = 0,
) -> VerifyReport:
    """Check a store (see the module docstring). `progress(done, total)` is called per shard.

    `read_data=False`: the quick structural check (no array reads, so no checksum/NaN checks).
    `workers`: shards checked by that many threads (zarr decoding, sha256 and numpy release the
    GIL); the report is the same as a serial one. `sample`: read the data of only that fraction
    of the complete shards (`sample_shards(..., seed)`), named in `report.sample`; damage in a
    shard outside the sample is not found. Markers, files, counts and the index are checked whole.
    """
    if workers < 1 or (sample is not None and not 0 < sample <= 1):
        raise ValueError(f"workers must be >= 1 and sample in (0, 1], got {workers}, {sample}")
    url = str(url)
    report = VerifyReport(url)
    damaged = "the store's metadata is damaged: restore it, or re-encode into a new --out"
    try:
        manifest = fmt.read_manifest(url)  # bounded and parsed by lplkit before zarr reads it
        group = zarr.open_group(url, mode="r", use_consolidated=False)
    except FileNotFoundError:
        fs, root = url_to_fs(url)
        exists = fs.exists(root)
        report.add(
            "missing_store",
            f"{url} is not a zarr group" if exists else f"{url} does not exist",
            fix="check the path, or run `lplkit encode`",
        )
        return report
    except Exception as exc:  # any parse/validation error of zarr.json: reported, never a crash
        report.add("manifest", f"zarr.json is unreadable ({_one_line(exc)})", fix=damaged)
        return report
    problems = fmt.manifest_problems(manifest)
    if problems:
        for p in problems:
            report.add(
                "manifest", p, fix="the store's manifest is damaged: re-encode into a new --out"
            )
        return report
    if manifest.get("buckets") is not None:
        options = {"checksums": checksums, "read_data": read_data, "workers": workers,
                   "sample": sample, "seed": seed}  # fmt: skip
        return _verify_bucketed(report, manifest, progress, options)
    count, size = manifest["source"]["count"], manifest["shard_size"]
    report.n_shards = fmt.n_shards(count, size)
    names = fmt.array_names(manifest)
    arrays = _check_arrays(report, group, manifest, names)
    if arrays is None:
        return report
    fs, root = url_to_fs(url)
    stored = _stored_files(fs, root, arrays)
    # One listing of progress/, each marker read once: the work is bounded by what is on disk,
    # not by a count read from a file; missing ones are named (the first few) and counted.
    scan = scan_markers(fs, root, count, size)
    present = set(scan.markers) | set(scan.problems)
    missing = report.n_shards - len(present)
    shown = [s for s in range(min(report.n_shards, len(present) + _MISSING_SHOWN))
             if s not in present][:_MISSING_SHOWN]  # fmt: skip
    for s in shown:
        start, stop = fmt.shard_range(s, count, size)
        report.add(
            "missing_shard",
            f"shard {s} (positions {start}..{stop - 1}) has no completion "
            "marker: missing or partially written",
            shard=s,
            fix=f"{RERUN} to encode it",
        )
    if missing > len(shown):
        report.add(
            "missing_shard",
            f"{missing - len(shown)} more shards have no completion marker",
            fix=f"{RERUN} to encode them",
        )
    for s, problem in sorted(scan.problems.items()):
        start, stop = fmt.shard_range(s, count, size)
        report.add(
            "marker", f"shard {s} (positions {start}..{stop - 1}): {problem}",
            shard=s, fix=_bad_shard_fix(url, s),
        )  # fmt: skip
    complete = sorted(scan.markers)
    report.complete_shards = len(complete)
    n_ok_markers = sum(m["n_ok"] for m in scan.markers.values())
    parts = index_part_shards(fs, root, report.n_shards)
    to_read = complete if sample is None or not read_data else sample_shards(complete, sample, seed)
    if sample is not None and read_data:
        report.sample = {"fraction": sample, "seed": seed, "checked": to_read}
    reading = set(to_read) if read_data else set()
    # index.parquet is read once, up front: each shard read compares its labels with it (so a
    # full verify does not read the labels array a second time, and a sample only its shards')
    index_table: Any = None
    index_error: Exception | None = None
    if manifest["completed"]:
        try:
            index_table = idx.read_table(fs, f"{root}/{fmt.INDEX_FILE}", check_pages=True)
        except Exception as exc:  # truncated/garbled parquet raises various Arrow errors
            index_error = exc
    index_labels = None
    if read_data and index_table is not None and _aligned(index_table, count):
        index_labels = index_table.column("label").to_numpy()

    def check(s: int) -> list[Problem]:
        start, stop = fmt.shard_range(s, count, size)
        shard_report = VerifyReport(url)
        marker = scan.markers[s]
        _check_shard_files(shard_report, arrays, stored, s, marker)
        if s in reading:
            _check_shard(
                shard_report, arrays, manifest, fs, root, s, start, stop, marker, checksums,
                s in parts, index_labels,
            )  # fmt: skip
        return shard_report.problems

    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(ThreadPoolExecutor(workers, "lplkit-verify"))
            results = pool.map(check, complete)  # in shard order: the same report as serial
        else:
            results = map(check, complete)
        for i, found in enumerate(results):
            report.problems.extend(found)
            if progress is not None:
                progress(i + 1, len(complete))
    unindexed = sorted(set(complete) - parts)
    if unindexed and not _index_holds_rows(fs, root, count):
        report.unindexed_shards = unindexed
        if not manifest["completed"]:  # a finalized store's unreadable index is reported below
            report.add(
                "index",
                f"{len(unindexed)} complete shard(s) ({_shown(unindexed)}) have no index part and "
                f"{fmt.INDEX_FILE} cannot supply their rows",
                fix=_unindexed_fix(url),
            )
    _check_index(
        report, group, manifest, n_ok_markers, index_table, index_error, labels_read=read_data
    )
    for name, entry in text_entries(manifest).items():
        _check_text(
            report, group, manifest, fs, root, name, entry, read_data, checksums,
            index_table, index_error,
        )  # fmt: skip
    return report


def _verify_bucketed(
    report: VerifyReport,
    manifest: dict[str, Any],
    progress: Callable[[int, int], None] | None,
    options: dict[str, Any],
) -> VerifyReport:
    """A bucketed store: each bucket's store verified as a store (its problems prefixed with the
    bucket), each bucket's manifest against the root's `buckets`, and the root index.parquet
    (one row per global position, the `bucket` column, each bucket's labels and status)."""
    url = report.url
    buckets = buckets_of(manifest) or []
    fs, root = url_to_fs(url)
    for done, b in enumerate(buckets, 1):
        sub_url = bucket_url(url, b.id)
        where = f"bucket {b.id} ({b.size[0]}x{b.size[1]})"
        sub = verify_store(sub_url, **options)
        report.buckets[b.id] = sub
        report.n_shards += sub.n_shards
        report.complete_shards += sub.complete_shards
        for p in sub.problems:
            # the shard is named in the message: `bad_shards` are per bucket (report.buckets)
            fix = p.fix.replace(
                f"{fmt.PROGRESS_DIR}/", f"{sub_url[len(url) + 1 :]}/{fmt.PROGRESS_DIR}/"
            )
            fix = fix.replace(f"`lplkit verify {sub_url}", f"`lplkit verify {url}")
            report.problems.append(Problem(p.kind, f"{where}: {p.message}", None, fix))
        sub_manifest = None
        with contextlib.suppress(Exception):
            sub_manifest = fmt.read_manifest(sub_url)
        if isinstance(sub_manifest, dict):
            expect = {"latent_shape": list(b.latent_shape), "count": b.rows,
                      "bucket": {"id": b.id, "size": list(b.size), "start": b.start}}  # fmt: skip
            got = {"latent_shape": sub_manifest.get("latent_shape"),
                   "count": (sub_manifest.get("source") or {}).get("count"),
                   "bucket": sub_manifest.get("bucket")}  # fmt: skip
            if got != expect:
                report.add(
                    "manifest",
                    f"{where}: its manifest ({got}) disagrees with the root's buckets ({expect})",
                    fix="the store's manifest is damaged: re-encode into a new --out",
                )
        if progress is not None:
            progress(done, len(buckets))
    if not manifest["completed"]:
        report.add("not_finalized", f"{url}: the encode did not finish", fix=RERUN)
        return report
    fix = f"run `lplkit verify {url} --repair`, then {RERUN} (finalize rebuilds it)"
    try:
        table = idx.read_table(fs, f"{root}/{fmt.INDEX_FILE}", check_pages=True)
    except Exception as exc:
        report.add("index", f"{fmt.INDEX_FILE} is unreadable ({_one_line(exc)})", fix=fix)
        return report
    count = int(manifest["source"]["count"])
    expect_bucket = np.repeat(np.arange(len(buckets)), [b.rows for b in buckets])
    if idx.BUCKET_COLUMN not in table.column_names or not _aligned(table, count):
        report.add("index", f"{fmt.INDEX_FILE} does not hold one row per position with a "
                   f"{idx.BUCKET_COLUMN!r} column", fix=fix)  # fmt: skip
        return report
    if not np.array_equal(table.column(idx.BUCKET_COLUMN).to_numpy(), expect_bucket):
        report.add("index", f"{fmt.INDEX_FILE}: the bucket column disagrees with the manifest",
                   fix=fix)  # fmt: skip
    n_ok = int(idx.ok_mask(table).sum())
    counts = manifest.get("counts") or {}
    if counts.get("ok") != n_ok or counts.get("total") != count:
        report.add("count", f"manifest counts {counts} but {fmt.INDEX_FILE} holds {count} rows, "
                   f"{n_ok} ok", fix=fix)  # fmt: skip
    for b in buckets:
        sub_fs, sub_root = url_to_fs(bucket_url(url, b.id))
        try:
            part = idx.read_table(sub_fs, f"{sub_root}/{fmt.INDEX_FILE}")
        except Exception:
            continue  # reported by the bucket's own verify
        rows = table.slice(b.start, b.rows)
        for column in ("label", "status", "key"):
            if not rows.column(column).equals(part.column(column)):
                report.add(
                    "index",
                    f"{fmt.INDEX_FILE}: the {column} of bucket {b.id}'s rows ({b.start}.."
                    f"{b.start + b.rows - 1}) differ from the bucket's own index",
                    fix=fix,
                )
                break
    return report


def _aligned(table: Any, count: int) -> bool:
    return len(table) == count and np.array_equal(
        table.column("position").to_numpy(), np.arange(count)
    )


def _shown(shards: list[int]) -> str:
    return ", ".join(map(str, shards[:10])) + (" ..." if len(shards) > 10 else "")


def _unindexed_fix(url: str) -> str:
    return (
        f"run `lplkit verify {url} --repair` (it marks the shards whose index rows are lost, "
        f"their index parts having been merged and removed, for re-encoding), then {RERUN} to "
        f"re-encode them and rebuild {fmt.INDEX_FILE}"
    )


def _index_holds_rows(fs: Any, root: str, count: int) -> bool:
    """Whether index.parquet has one row per position (what a finalize takes the rows of shards
    without an index part from); reads the metadata and the delta-encoded position column."""
    try:
        return idx.IndexFile(count, fs=fs, path=f"{root}/{fmt.INDEX_FILE}").aligned
    except Exception:  # missing, truncated, foreign: it holds nothing usable
        return False


def _check_text(
    report: VerifyReport,
    group: zarr.Group,
    manifest: dict[str, Any],
    fs: Any,
    root: str,
    name: str,
    entry: dict[str, Any],
    read_data: bool,
    checksums: bool,
    index_table: Any,
    index_error: Exception | None,
) -> None:
    """One cached text encoder: arrays, markers, checksums, NaN/Inf, row counts, masks."""
    rerun = (
        f"delete {txt.path(name)}/{fmt.PROGRESS_DIR}/ (or just the named shard's marker) and "
        f"re-run `lplkit encode-text {report.url} --text-encoder {entry.get('id')}"
        + (f":{entry['subfolder']}" if entry.get("subfolder") else "")
        + f" --name {name}` (it resumes)"
    )

    def add(kind: str, message: str) -> None:
        report.add(kind, f"{TEXT_PROBLEM}{name!r}: {message}", fix=rerun)

    if not isinstance(entry, dict) or not entry.get("completed"):
        add("text_incomplete", "not finished (encode-text interrupted or running)")
        return
    count = manifest["source"]["count"]
    arrays: dict[str, zarr.Array] = {}
    for a, shape in txt.row_shapes(entry).items():
        want = np.dtype("uint8") if a == txt.MASK else fmt.storage_dtype(entry["dtype"])
        for full in (a, txt.EMPTY + a):
            rows = count if full == a else 1
            try:
                arr = array_of(group, txt.path(name, full))
            except Exception as exc:  # missing or damaged metadata
                add("text_array", f"array {full!r} is missing or unreadable ({_one_line(exc)})")
                return
            if tuple(arr.shape) != (rows, *shape) or arr.dtype != want:
                add("text_array", f"array {full!r} is {arr.dtype} {tuple(arr.shape)}, the "
                    f"manifest says {want} {(rows, *shape)}")  # fmt: skip
                return
            arrays[full] = arr
    try:
        if index_table is None:  # read once by verify_store; the image side reports why
            raise index_error or ValueError(f"{fmt.INDEX_FILE} is not written")
        shard_rows, _ = txt.geometry(group)
        ok = np.zeros(count, dtype=bool)
        ok[idx.ok_mask(index_table)] = True
    except Exception as exc:  # the image side is reported by the checks above
        add("text_count", f"cannot check rows against the index ({_one_line(exc)})")
        return
    scan = scan_markers(fs, f"{root}/{txt.path(name)}", count, shard_rows)
    n_ok = 0
    for s in range(fmt.n_shards(count, shard_rows)):
        start, stop = fmt.shard_range(s, count, shard_rows)
        marker = scan.markers.get(s)
        if marker is None:
            add("text_shard", f"shard {s}: {scan.problems.get(s) or 'no completion marker'}")
            continue
        n_ok += marker["n_ok"]
        if marker["n_ok"] != int(ok[start:stop].sum()):
            add("text_count", f"shard {s}: {marker['n_ok']} rows encoded, the index has "
                f"{int(ok[start:stop].sum())} ok rows")  # fmt: skip
        if read_data:
            _check_text_shard(add, entry, arrays, marker, ok[start:stop], s, start, checksums)
    if n_ok != (entry.get("counts") or {}).get("ok"):
        add("text_count", f"the markers count {n_ok} rows, the manifest {entry.get('counts')}")
    if read_data:
        for a in txt.row_shapes(entry):
            data = np.asarray(arrays[txt.EMPTY + a][:])
            if checksums and fmt.sha256_array(data) != (entry.get("empty_sha256") or {}).get(a):
                add("checksum", f"the empty caption's {a!r} does not match its recorded sha256")


def _check_text_shard(
    add: Callable[[str, str], None],
    entry: dict[str, Any],
    arrays: dict[str, zarr.Array],
    marker: dict[str, Any],
    ok: np.ndarray,
    s: int,
    start: int,
    checksums: bool,
) -> None:
    stop = start + len(ok)
    for a in txt.row_shapes(entry):
        try:
            data = np.asarray(arrays[a][start:stop])
        except Exception as exc:  # a damaged shard file
            add("unreadable", f"shard {s}: {a!r} cannot be read ({_one_line(exc)})")
            continue
        if checksums and fmt.sha256_array(data) != marker["checksums"].get(a):
            add("checksum", f"shard {s}: {a!r} does not match its recorded sha256 (data changed "
                "after it was written)")  # fmt: skip
        if a == txt.MASK:
            m = data.astype(np.int64)
            ones = m.sum(axis=1)
            # a tokenizer mask is 1s then 0s (right padding); ok rows hold >= 1 token, others none
            prefix = (m == (np.arange(m.shape[1]) < ones[:, None])).all(axis=1)
            bad = ~prefix | (m > 1).any(axis=1) | ((ones > 0) != ok)
            if bad.any():
                where = (start + np.flatnonzero(bad)[:5]).tolist()
                add("text_mask", f"shard {s}: inconsistent attention mask at positions {where}")
            continue
        finite = fmt.finite_rows(data, entry["dtype"])
        if not finite.all():
            where = (start + np.flatnonzero(~finite)[:5]).tolist()
            add("nonfinite", f"shard {s}: {a!r} has NaN/Inf at positions {where}")


def _check_arrays(
    report: VerifyReport, group: zarr.Group, manifest: dict[str, Any], names: tuple[str, ...]
) -> dict[str, zarr.Array] | None:
    count, latent = manifest["source"]["count"], tuple(manifest["latent_shape"])
    arrays = {}
    for name in names:
        expected = (count,) if name == fmt.LABELS else (count, 2, *latent)
        try:
            arr = array_of(group, name)
        except KeyError:
            report.add("array", f"array {name!r} is missing", fix="re-encode into a new --out")
            continue
        except Exception as exc:  # a damaged array zarr.json (cut, garbled): reported
            report.add(
                "array",
                f"array {name!r} has unreadable metadata ({_one_line(exc)})",
                fix="restore it, or re-encode into a new --out",
            )
            continue
        layout = fmt.layout_problem(arr.metadata.to_dict())
        if layout:
            report.add(
                "array",
                f"array {name!r}: {layout}, which lplkit never writes (metadata edited?)",
                fix="restore it, or re-encode into a new --out",
            )
            continue
        want_dtype = (
            np.dtype("int32") if name == fmt.LABELS else fmt.storage_dtype(manifest["dtype"])
        )
        if arr.dtype != want_dtype:
            report.add(
                "array",
                f"array {name!r} is stored as {arr.dtype}, but the manifest's dtype "
                f"{manifest['dtype']!r} needs {want_dtype} (manifest edited?)",
                fix="restore the manifest, or re-encode into a new --out",
            )
            continue
        if tuple(arr.shape) != expected:
            report.add(
                "count",
                f"array {name!r} has shape {tuple(arr.shape)}, manifest says {expected}",
                fix="re-encode into a new --out",
            )
            continue
        arrays[name] = arr
    return arrays if len(arrays) == len(names) else None


def _check_shard(
    report: VerifyReport,
    arrays: dict[str, zarr.Array],
    manifest: dict[str, Any],
    fs: Any,
    root: str,
    s: int,
    start: int,
    stop: int,
    marker: dict[str, Any],
    checksums: bool,
    has_part: bool,
    index_labels: np.ndarray | None,
) -> None:
    fix = _bad_shard_fix(report.url, s)
    for name, arr in arrays.items():
        try:
            data = np.asarray(arr[start:stop])
        except Exception as exc:  # any decode failure means a damaged shard file
            report.add(
                "unreadable",
                f"shard {s}: array {name!r} cannot be read ({type(exc).__name__}: {exc})",
                shard=s,
                fix=fix,
            )
            continue
        if checksums and fmt.sha256_array(data) != marker["checksums"].get(name):
            report.add(
                "checksum",
                f"shard {s}: {name!r} does not match its recorded sha256 (data "
                "changed after it was written)",
                shard=s,
                fix=fix,
            )
        if name == fmt.LABELS:
            if index_labels is not None and not np.array_equal(data, index_labels[start:stop]):
                report.add(
                    "labels",
                    f"shard {s}: labels array differs from {fmt.INDEX_FILE}",
                    shard=s,
                    fix=fix,
                )
            continue
        values = fmt.from_storage(data, manifest["dtype"])
        bad = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
        if bad.any():
            where = (start + np.flatnonzero(bad)[:5]).tolist()
            report.add(
                "nonfinite",
                f"shard {s}: {name!r} has NaN/Inf at positions {where}",
                shard=s,
                fix=fix,
            )
        neg = (values[:, 1] < 0).reshape(len(values), -1).any(axis=1)
        if neg.any():
            where = (start + np.flatnonzero(neg)[:5]).tolist()
            report.add(
                "negative_std",
                f"shard {s}: {name!r} has std < 0 at positions {where}",
                shard=s,
                fix=fix,
            )
    if not has_part:  # finalized: the rows are in index.parquet (checked whole, page checksums)
        return
    try:
        part = idx.read_bytes(fs, fmt.index_part_path(root, s))
    except FileNotFoundError:  # removed since the listing (a finalize running now)
        return
    if checksums and idx.sha256_bytes(part) != marker.get("index_part_sha256"):
        report.add(
            "checksum",
            f"shard {s}: index part does not match its recorded sha256",
            shard=s,
            fix=fix,
        )


def _stored_files(fs: Any, root: str, arrays: dict[str, zarr.Array]) -> set[str]:
    """Paths of every stored object under the arrays (one listing per array)."""
    found: set[str] = set()
    for name in arrays:
        with contextlib.suppress(FileNotFoundError):
            found.update(str(p).rstrip("/") for p in fs.find(f"{root}/{name}"))
    return {p.split("://", 1)[-1].lstrip("/") for p in found}


def _check_shard_files(
    report: VerifyReport,
    arrays: dict[str, zarr.Array],
    stored: set[str],
    s: int,
    marker: dict[str, Any],
) -> None:
    """A shard with ok samples must have its moments shard file stored (zarr would read zeros)."""
    if marker["n_ok"] == 0:
        return
    _, root = url_to_fs(report.url)
    for name, arr in arrays.items():
        if name == fmt.LABELS:  # all -1 (unlabeled) is the fill value: legitimately unstored
            continue
        key = arr.metadata.encode_chunk_key((s,) + (0,) * (arr.ndim - 1))
        if f"{root}/{name}/{key}".lstrip("/") not in stored:
            report.add(
                "missing_data",
                f"shard {s}: the {name!r} shard file ({name}/{key}) is missing, but its marker "
                f"says it holds {marker.get('n_ok')} ok samples (reads would return zeros)",
                shard=s,
                fix=_bad_shard_fix(report.url, s),
            )


def _check_index(
    report: VerifyReport,
    group: zarr.Group,
    manifest: dict[str, Any],
    n_ok_markers: int,
    table: Any,
    error: Exception | None,
    *,
    labels_read: bool,
) -> None:
    """The index (read by the caller: `table`, or the `error` reading it raised) against the
    count, the markers, the manifest and (unless the shard checks compared them: `labels_read`)
    the labels array."""
    url, count = report.url, manifest["source"]["count"]
    if not manifest["completed"]:
        if report.complete_shards == report.n_shards:
            report.add(
                "not_finalized", "all shards are written but the store was not finalized", fix=RERUN
            )
        else:
            report.add(
                "not_finalized",
                "the store is not finished (encode interrupted or running)",
                fix=RERUN,
            )
        return
    rebuild = f"run `lplkit verify {url} --repair`, then {RERUN} to rebuild {fmt.INDEX_FILE}"
    if report.unindexed_shards:
        rebuild = _unindexed_fix(url)
    if table is None:
        report.add(
            "index",
            f"{fmt.INDEX_FILE} is unreadable or truncated ({type(error).__name__}: {error})",
            fix=rebuild,
        )
        return
    if not _aligned(table, count):
        report.add(
            "count", f"{fmt.INDEX_FILE} has {len(table)} rows for {count} positions", fix=rebuild
        )
        return
    n_ok = int(idx.ok_mask(table).sum())
    counts = manifest["counts"]
    if report.complete_shards < report.n_shards:
        n_ok_markers = n_ok  # missing markers are already reported; don't report them twice
    if not (n_ok == n_ok_markers == counts["ok"]) or counts["total"] != count:
        report.add(
            "count",
            f"ok samples disagree: index {n_ok}, shard markers {n_ok_markers}, "
            f"manifest {counts['ok']} (total {counts['total']} vs {count})",
            fix=rebuild,
        )
    if labels_read:
        return
    try:
        labels = array_of(group, fmt.LABELS)[:]
    except Exception:  # already reported per shard
        return
    diff = np.flatnonzero(labels != table.column("label").to_numpy())
    for s in sorted({int(p) // manifest["shard_size"] for p in diff}):
        report.add(
            "labels",
            f"shard {s}: labels array differs from {fmt.INDEX_FILE}",
            shard=s,
            fix=_bad_shard_fix(url, s),
        )


def require_sound_store(url: str, *, full: bool = False) -> VerifyReport:
    """Raise `StoreCorruptError` (one line: the first problem, its fix, the count) unless the store
    passes the quick structural check (`full=False`) or the full verification (`full=True`)."""
    fmt.require_store_path(str(url))
    report = verify_store(str(url), read_data=full)
    if report.ok:
        return report
    first = report.problems[0]
    more = f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
    raise StoreCorruptError(
        f"the latent store {url} is damaged: {first.message}{more}; fix: {first.fix or RERUN}; "
        f"`lplkit verify {url}` lists every problem"
    )


def repair_store(url: str, report: VerifyReport) -> list[int]:
    """Remove bad shards' markers and clear `completed` so an encode re-run fixes the store.

    Takes the writer lock (refuses while an encode runs). Returns the shards to be re-encoded.
    """
    fs, root = url_to_fs(str(url))
    lock = StoreLock(fs, root)
    lock.acquire()
    try:
        for b, sub in report.buckets.items():  # a bucketed store: each bucket's bad shards
            sub_fs, sub_root = url_to_fs(bucket_url(str(url), b))
            for s in sub.bad_shards:
                remove_if_exists(sub_fs, fmt.marker_path(sub_root, s))
            if sub.problems:
                _clear_completed(bucket_url(str(url), b))
        for s in report.bad_shards:  # incl. shards whose index rows are lost: re-encoded
            remove_if_exists(fs, fmt.marker_path(root, s))
        # a text encoder's problem leaves the latents usable (its fix is an encode-text re-run)
        if any(not p.message.startswith(TEXT_PROBLEM) for p in report.problems):
            _clear_completed(str(url))
    finally:
        lock.release()
    if report.buckets:
        return [s for sub in report.buckets.values() for s in sub.bad_shards]
    return report.bad_shards


def _clear_completed(url: str) -> None:
    group = zarr.open_group(url, mode="r+", use_consolidated=False)
    manifest = group.attrs.get(fmt.MANIFEST_KEY)
    if isinstance(manifest, dict) and manifest.get("completed"):
        group.attrs[fmt.MANIFEST_KEY] = dict(manifest, completed=False)
