"""store_scan: resume scan, finalize and verify at 100k / 1M rows, before and after issue #27 item 5.

Writes (unfinalized) synthetic stores of 4x8x8 fp16 latents like `store_scale.py` (1 KiB a row,
1,024-row shards, 64-row chunks, through the real `StoreWriter`), keeps a copy of their index parts,
then measures each figure in a fresh child process:

- `scan_before` / `scan_after`: what a resume that finds every shard complete costs in marker reads.
  Before = the old writer's calls, reproduced with the marker functions it used (`pending_shards`,
  then `all_pending_shards` after the encode loop and again in `finalize`: `read_marker` for every
  shard three times, one file at a time). After = `StoreWriter.create_or_resume` +
  `pending_shards()` + `all_pending_shards()` (one scan). Listings of progress/ and marker opens are
  counted by wrapping fsspec's LocalFileSystem; progress/ is evicted from the page cache first.
- `finalize_before` / `finalize_after`: building index.parquet from the parts. Before = the old
  finalize (read every part, `pa.concat_tables`, one `pq.write_table` of the whole index); after =
  `StoreWriter.finalize()` (streamed in 64k-row groups, then index_parts/ removed; its marker scan
  done before the clock starts: the old one is not timed either). Both write the manifest and the
  consolidated metadata. Wall time and
  peak resident memory added (VmHWM after - VmRSS before, in the child). The parts and the
  unfinished manifest are restored before each run.
- `verify_serial` / `verify_workers2` / `verify_sample0.1`: `verify_store` on the finalized store,
  the store's files evicted from the page cache first (`posix_fadvise(DONTNEED)` on this store's
  files only; the machine is shared, so the whole cache is not dropped).

    python benchmarks/store_scan.py --rows 100000,1000000 --dir /tmp/scan \
        --json docs/results/store_scan.json
    python benchmarks/store_scan.py --table docs/results/store_scan.json   # the docs table

One run each on a shared machine: compare figures within a run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from store_scale import CHUNK, SHAPE, SHARD, evict_files

from lplkit.store.synthetic import shard_moments


def write_unfinished(url: str, count: int, seed: int = 0) -> float:
    """Stream `count` rows into a store (every shard written, not finalized); returns seconds."""
    from lplkit.store import StoreWriter, new_manifest

    manifest = new_manifest(
        autoencoder={"id": "synthetic", "class": "AutoencoderKL", "config_hash": "0"},
        resolution=8 * SHAPE[1], latent_shape=SHAPE,
        source={"id": "synthetic", "split": "train", "revision": None, "count": count},
        dtype="float16", flips=False, shard_size=SHARD, chunk_size=CHUNK, codec="none",
    )  # fmt: skip
    t = time.perf_counter()
    with StoreWriter.create_or_resume(url, manifest) as writer:
        for s in writer.pending_shards():
            lo, hi = writer.shard_range(s)
            labels = (np.arange(lo, hi) % 1000).astype(np.int32)
            rows = [{"key": f"img_{p:08d}", "status": "ok"} for p in range(lo, hi)]
            writer.write_shard(s, shard_moments(seed, s, hi - lo, SHAPE), None, labels, rows)
    return time.perf_counter() - t


def evict(paths: list[Path]) -> None:
    """Drop these files (only) from the page cache."""
    os.sync()
    evict_files(paths)


def restore_unfinished(url: Path, parts: Path) -> None:
    """The store as a crash before finalize leaves it: every part, manifest not completed."""
    import zarr

    shutil.rmtree(url / "index_parts", ignore_errors=True)
    shutil.copytree(parts, url / "index_parts")
    (url / "index.parquet").unlink(missing_ok=True)
    group = zarr.open_group(str(url), mode="r+", use_consolidated=False)
    group.attrs["lplkit"] = dict(group.attrs["lplkit"], completed=False, counts=None)


def _reset_peak() -> None:
    """Start VmHWM (peak resident memory) again from the current VmRSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5\n")


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key}")


def _counting_fs() -> collections.Counter:
    from fsspec.implementations.local import LocalFileSystem

    calls: collections.Counter = collections.Counter()
    ls, open_ = LocalFileSystem.ls, LocalFileSystem._open

    def counting_ls(self, path, *args, **kwargs):
        if str(path).rstrip("/").endswith("/progress"):
            calls["progress_listings"] += 1
        return ls(self, path, *args, **kwargs)

    def counting_open(self, path, mode="rb", *args, **kwargs):
        if "/progress/shard-" in str(path) and "r" in mode:
            calls["marker_opens"] += 1
        return open_(self, path, mode, *args, **kwargs)

    LocalFileSystem.ls, LocalFileSystem._open = counting_ls, counting_open  # type: ignore[method-assign]
    return calls


def old_finalize(url: str) -> None:
    """The finalize before this change: every part concatenated in memory, one write of the whole
    index, then the manifest and consolidated metadata (pending-shard check not included)."""
    import pyarrow as pa
    import zarr

    from lplkit.store import format as fmt
    from lplkit.store import index as idx
    from lplkit.store.sidecar import url_to_fs, write_bytes_atomic
    from lplkit.store.tooling import consolidate

    fs, root = url_to_fs(url)
    manifest = fmt.read_manifest(url)
    n = fmt.n_shards(manifest["source"]["count"], manifest["shard_size"])
    parts = [idx.read_table(fs, fmt.index_part_path(root, s)) for s in range(n)]
    table = pa.concat_tables(parts)
    assert np.array_equal(table.column("position").to_numpy(), np.arange(len(table)))
    write_bytes_atomic(fs, f"{root}/{fmt.INDEX_FILE}", idx.table_to_bytes(table))
    n_ok = int(idx.ok_mask(table).sum())
    count = manifest["source"]["count"]
    counts = {"total": count, "ok": n_ok, "skipped": count - n_ok}
    group = zarr.open_group(url, mode="r+", use_consolidated=False)
    group.attrs[fmt.MANIFEST_KEY] = dict(manifest, counts=counts, completed=True)
    consolidate(url)


def child(what: str, url: str) -> dict[str, Any]:
    # one-time import costs, not measured (no bytecode cache here: torch, which verify's bfloat16
    # conversion imports, and pandas, which pyarrow pulls in, compile from source in seconds)
    import pandas  # noqa: F401
    import pyarrow.dataset
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401
    import zarr  # noqa: F401

    from lplkit.store import StoreWriter
    from lplkit.store import format as fmt
    from lplkit.store.markers import read_marker
    from lplkit.store.sidecar import url_to_fs
    from lplkit.store.verify import verify_store

    out: dict[str, Any] = {}
    manifest = fmt.read_manifest(url)
    count, size = manifest["source"]["count"], manifest["shard_size"]
    _reset_peak()
    base = _status("VmRSS")
    t = time.perf_counter()
    if what.startswith("scan"):
        calls = _counting_fs()
        t = time.perf_counter()
        if what == "scan_before":
            fs, root = url_to_fs(url)
            for _ in range(3):  # pending_shards, all_pending_shards after the loop, finalize's
                pending = [s for s in range(fmt.n_shards(count, size))
                           if read_marker(fs, root, s, *fmt.shard_range(s, count, size)) is None]  # fmt: skip
        else:
            with StoreWriter.create_or_resume(url, manifest, take_lock=False) as w:
                t = time.perf_counter()  # the scan only (opening the zarr group is not timed)
                pending = w.pending_shards()
                pending = w.all_pending_shards()
        out["s"] = time.perf_counter() - t
        out["pending"] = len(pending)
        out.update(calls)
    elif what == "finalize_before":
        old_finalize(url)
    elif what == "finalize_after":
        with StoreWriter.create_or_resume(url, manifest, take_lock=False) as w:
            w.scan()  # the markers (timed in scan_*), then finalize's own work
            _reset_peak()
            base, t = _status("VmRSS"), time.perf_counter()
            w.finalize()
    elif what.startswith("verify"):
        kw: dict[str, Any] = {
            "verify_serial": {}, "verify_workers2": {"workers": 2},
            "verify_sample0.1": {"sample": 0.1},
        }[what]  # fmt: skip
        report = verify_store(url, **kw)
        out["ok"] = report.ok
        out["checked_shards"] = (
            len(report.sample["checked"]) if report.sample else report.complete_shards
        )
    if "s" not in out:
        out["s"] = time.perf_counter() - t
    out["peak_added_bytes"] = _status("VmHWM") - base
    return out


def run_child(what: str, url: Path, evicted: list[Path]) -> dict[str, Any]:
    evict(evicted)
    cmd = [sys.executable, __file__, "--child", what, "--url", str(url)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"  {what:18s} {out}", flush=True)
    return out


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Add the derived figures the docs table shows (MiB, before/after ratios) to each size."""
    for r in results["sizes"].values():
        for v in r.values():
            if isinstance(v, dict) and "peak_added_bytes" in v:
                v["peak_added_mib"] = round(v["peak_added_bytes"] / (1 << 20), 1)
        for side in ("scan_before", "scan_after"):  # counted only when they happen
            r[side].setdefault("progress_listings", 0)
            r[side].setdefault("marker_opens", 0)
        r["scan_speedup"] = round(r["scan_before"]["s"] / r["scan_after"]["s"], 2)
        r["finalize_speedup"] = round(r["finalize_before"]["s"] / r["finalize_after"]["s"], 2)
        r["verify_workers2_speedup"] = round(r["verify_serial"]["s"] / r["verify_workers2"]["s"], 2)
        r["verify_sample_speedup"] = round(r["verify_serial"]["s"] / r["verify_sample0.1"]["s"], 2)
    return results


TABLE = [  # (label, key, field, format)
    ("resume scan: listings of progress/, before / after", "scan", "progress_listings", "{}"),
    ("resume scan: marker reads, before / after", "scan", "marker_opens", "{}"),
    ("resume scan: time (s), before / after", "scan", "s", "{:.2f}"),
    ("finalize: time (s), before / after", "finalize", "s", "{:.2f}"),
    ("finalize: peak memory added (MiB), before / after", "finalize", "peak_added_mib", "{:.1f}"),
]


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per figure, one column per size."""
    sizes = list(results["sizes"])
    lines = ["| | " + " | ".join(f"{int(n):,} rows" for n in sizes) + " |",
             "| --- |" + " --- |" * len(sizes)]  # fmt: skip
    for label, key, field, form in TABLE:
        cells = []
        for n in sizes:
            pair = [
                results["sizes"][n][f"{key}_{side}"].get(field, 0) for side in ("before", "after")
            ]
            cells.append(" / ".join(form.format(v) for v in pair))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for label, key in (("`verify` serial (s)", "verify_serial"),
                       ("`verify --workers 2` (s)", "verify_workers2"),
                       ("`verify --sample 0.1` (s)", "verify_sample0.1")):  # fmt: skip
        cells = [f"{results['sizes'][n][key]['s']:.1f}" for n in sizes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="100000,1000000")
    ap.add_argument("--dir", default="/tmp/lplkit-store-scan")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the stores for another run")
    ap.add_argument("--table", default=None, help="add the derived figures to this result file, "
                    "rewrite it and print its markdown table")  # fmt: skip
    ap.add_argument("--child", default=None)
    ap.add_argument("--url", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url)))
        return
    if args.table:
        results = summarize(json.loads(Path(args.table).read_text()))
        Path(args.table).write_text(json.dumps(results, indent=2) + "\n")
        print(table(results))
        return
    import lplkit

    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "lplkit": str(Path(lplkit.__file__).parent),
        "shape": SHAPE, "shard_size": SHARD, "chunk_size": CHUNK,
        "cache": "posix_fadvise(DONTNEED) on the files read, before each child",
        "sizes": {},
    }  # fmt: skip
    for count in [int(r) for r in args.rows.split(",")]:
        url, parts = base / f"s{count}.zarr", base / f"s{count}.parts"
        r: dict[str, Any] = {}
        if not parts.exists():
            shutil.rmtree(url, ignore_errors=True)
            r["write_s"] = write_unfinished(str(url), count)
            shutil.copytree(url / "index_parts", parts)
        print(f"{count} rows", flush=True)
        restore_unfinished(url, parts)
        for what in ("scan_before", "scan_after"):
            r[what] = run_child(what, url, [url / "progress"])
        for what in ("finalize_before", "finalize_after"):
            restore_unfinished(url, parts)
            r[what] = run_child(what, url, [url / "progress", url / "index_parts"])
        r["index_parts_left"] = (url / "index_parts").exists()
        r["index_bytes"] = (url / "index.parquet").stat().st_size
        for what in ("verify_serial", "verify_workers2", "verify_sample0.1"):
            r[what] = run_child(what, url, [url])
        results["sizes"][count] = r
        if not args.keep:
            shutil.rmtree(url)
            shutil.rmtree(parts)
    summarize(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
