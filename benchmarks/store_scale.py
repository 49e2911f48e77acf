"""store_scale: the latent store at 100k / 1M / 4M rows against np.memmap, cold and warm page cache.

Writes synthetic stores of 4x8x8 fp16 latents (1 KiB a row; `--geometry rows`: layout 2's 1,024-row
shards and 64-row chunks; `--geometry bytes`: layout 3's default, 128 MiB shards of 1 MiB chunks; no
flips, all rows ok) through the real `StoreWriter` (`stream_synthetic_store`), one shard in memory,
plus an `.npy` of the same fp16 moments for the memmap baseline. Then measures, each in a fresh
child process (so imports, RSS and caches are the child's own):

- `open`: `LatentStore.open` wall time and resident memory it adds (VmRSS after - before);
- `first_batch`: time from `LatentStore.open` returning to the first `store.batches(256)` batch,
  vs a memmap doing the same (a random epoch permutation, gather 256 rows, z = mean + std * eps);
- `dataset_{0,2}w` (warm: every file of the store and the memmap read once first): a shuffled `DataLoader(LatentDataset, batch_size=256, num_workers=0|2)` for
  `--samples` samples (worker start included), time per sample vs the same DataLoader over a
  map-style memmap dataset drawing z the same way;
  with each worker's resident memory at the end (VmRSS, its anonymous part, and PSS, which divides
  pages shared with the parent or the other worker among them) and the dataset's build time;
- `steady` (warm): `store.batches(256)` past its first 8 batches (and, for a store within the
  memory budget, once it is held in RAM), `--steady-samples` samples, vs a
  memmap gathering the same positions in the same batches and drawing z the same way; also for
  4x32x32 stores (`--wide-rows`, 16 KiB a row, steady state only);
- `verify`: full `verify_store` (all checksums) at sizes up to `--verify-max-rows`.

"Cold" drops the page cache before the child starts (`echo 3 > /proc/sys/vm/drop_caches`, needs
root; else `posix_fadvise(DONTNEED)` on every file of the store and the memmap; the JSON records
which). The machine is shared: numbers are one run each, ratios come from the same run.

    python benchmarks/store_scale.py --rows 100000,1000000,4000000 --dir /tmp/scale \
        --label after --json docs/results/store_scale_after.json [--keep]

The stores are deleted at the end unless `--keep`; an existing store of the right size is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (4, 8, 8)
SHARD, CHUNK, BATCH = 1024, 64, 256
STEADY_SKIP = 8  # batches before the steady-state timing starts (first batches: pipelined reads)


# -- writing ----------------------------------------------------------------------------------------


def write_store(
    url: str,
    npy: str,
    count: int,
    geometry: str = "rows",
    seed: int = 0,
    shape: tuple[int, int, int] = SHAPE,
) -> float:
    """Stream `count` rows into a store (`stream_synthetic_store`: one shard in memory) and the
    memmap file; returns seconds. geometry "rows": 1,024-row shards of 64-row chunks (layouts 1-2,
    encode's default before layout 3); "bytes": `format.store_geometry`'s default (layout 3)."""
    from lplkit.store.synthetic import stream_synthetic_store

    sizes = {"shard_size": SHARD, "chunk_size": CHUNK} if geometry == "rows" else {}
    t = time.perf_counter()
    mm = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float16, shape=(count, 2, *shape))

    def to_memmap(lo: int, hi: int, m: np.ndarray, flip: np.ndarray | None) -> None:
        mm[lo:hi] = m.astype(np.float16)

    stream_synthetic_store(
        url, count=count, latent_shape=shape, num_classes=1000, seed=seed, on_shard=to_memmap,
        **sizes,
    )  # fmt: skip
    mm.flush()  # closed when the last reference (here, the closure) goes
    return time.perf_counter() - t


# -- page cache -------------------------------------------------------------------------------------


def drop_cache(paths: list[str]) -> str:
    """Empty the page cache (all of it when root may, else the files under `paths`)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        pass
    evict_files(paths)
    return "fadvise_dontneed"


def evict_files(paths: list[str] | list[Path]) -> None:
    """Drop the files under `paths` (and only them) from the page cache (flushed beforehand)."""
    for root in map(Path, paths):
        for f in [root] if root.is_file() else root.rglob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def warm_cache(paths: list[str]) -> None:
    """Read every file under `paths` once, so both sides of a "warm" comparison start cached."""
    for root in paths:
        files = [Path(root)] if Path(root).is_file() else sorted(Path(root).rglob("*"))
        for f in files:
            if f.is_file():
                with open(f, "rb") as fh:
                    while fh.read(16 << 20):
                        pass


# -- child measurements -----------------------------------------------------------------------------


def rss() -> int:
    """Resident bytes of this process (after returning freed Arrow memory to the OS)."""
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def proc_rss(pid: int) -> dict[str, int]:
    """VmRSS and its anonymous / file parts, and the proportional set size, of process `pid`, in
    bytes."""
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem",
              "Pss": "pss", "Pss_Anon": "pss_anon"}  # fmt: skip
    out = {}
    for f in ("status", "smaps_rollup"):  # Pss: shared pages divided among their sharers
        for line in Path(f"/proc/{pid}/{f}").read_text().splitlines():
            key = line.split(":")[0]
            if key in fields:
                out[fields[key]] = int(line.split()[1]) * 1024
    return out


def sample(m16: np.ndarray, g: Any) -> Any:
    """z = mean + std * eps for float16 moments (n, 2, C, h, w)."""
    import torch

    m = torch.from_numpy(np.asarray(m16, dtype=np.float32))
    return m[:, 0] + m[:, 1] * torch.randn(m[:, 0].shape, generator=g)


class MemmapDataset:
    """The memmap baseline of `LatentDataset`: item i drawn with a generator seeded by (0, 0, i)."""

    def __init__(self, npy: str) -> None:
        self.npy = npy
        self.mm: np.ndarray | None = None
        self.n = int(np.load(npy, mmap_mode="r").shape[0])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        if self.mm is None:
            self.mm = np.load(self.npy, mmap_mode="r")
        state = np.random.SeedSequence([0, 0, i]).generate_state(2, np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return {"latent": sample(self.mm[i : i + 1], g)[0], "label": i % 1000, "position": i}


def child(what: str, url: str, npy: str, samples: int) -> dict[str, Any]:
    # Imported before any timing: a one-time process cost, and here (PYTHONDONTWRITEBYTECODE=1,
    # no bytecode cache in the venv) pandas compiles from source in ~10 s whenever pyarrow
    # pulls it in, which would swamp what is measured.
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torch
    import zarr  # noqa: F401

    torch.set_num_threads(1)
    from torch.utils.data import DataLoader

    from lplkit.store import LatentStore

    out: dict[str, Any] = {}
    if what == "open":
        before = rss()
        t = time.perf_counter()
        store = LatentStore.open(url)
        out["open_s"] = time.perf_counter() - t
        out["open_rss_bytes"] = rss() - before
        out["open_rss_per_row"] = out["open_rss_bytes"] / len(store)
    elif what == "first_batch":
        store = LatentStore.open(url)
        t = time.perf_counter()
        next(iter(store.batches(BATCH, seed=0)))
        out["first_batch_s"] = time.perf_counter() - t
    elif what == "first_batch_memmap":
        t = time.perf_counter()
        mm = np.load(npy, mmap_mode="r")
        order = np.random.default_rng(0).permutation(len(mm))
        sample(mm[np.sort(order[:BATCH])], torch.Generator().manual_seed(0))
        out["first_batch_memmap_s"] = time.perf_counter() - t
    elif what.startswith("dataset"):
        workers = int(what.rsplit("_", 1)[1])
        if what.startswith("dataset_memmap"):
            ds: Any = MemmapDataset(npy)
        else:
            t = time.perf_counter()
            ds = LatentStore.open(url).as_dataset(seed=0)  # reads the key + caption columns
            out["dataset_init_s"] = time.perf_counter() - t
        g = torch.Generator().manual_seed(0)
        loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers, generator=g)
        t = time.perf_counter()
        n = 0
        it = iter(loader)
        for b in it:
            n += len(b["latent"])
            if n >= samples:
                break
        out["s_per_sample"] = (time.perf_counter() - t) / n
        # Resident memory of each worker after serving its share (anonymous = its own copies;
        # file = mapped file pages, e.g. a memmap's, shared through the page cache)
        pids = [w.pid for w in getattr(it, "_workers", [])]
        out["worker_rss"] = [proc_rss(pid) for pid in pids]
        out["main_rss"] = proc_rss(os.getpid())
    elif what == "steady":
        # Shuffled loader past its first batches vs a warm memmap gathering the same positions
        # in the same batches and drawing z the same way (both single-threaded sampling)
        store = LatentStore.open(url)
        it = store.batches(BATCH, seed=0, with_index=True)
        for _ in range(STEADY_SKIP):
            next(it)
        if store.window_chunks() is None:  # within the budget: steady = the store held in RAM
            store._ram_loading().result()
        served = []
        t = time.perf_counter()
        for _ in range(samples // BATCH):
            served.append(next(it)[2].numpy())
        out["loader_s_per_sample"] = (time.perf_counter() - t) / (len(served) * BATCH)
        out["window_chunks"] = store.window_chunks()
        mm = np.load(npy, mmap_mode="r")
        g = torch.Generator().manual_seed(0)
        t = time.perf_counter()
        for pos in served:
            sample(mm[pos], g)
        out["memmap_s_per_sample"] = (time.perf_counter() - t) / (len(served) * BATCH)
        out["throughput_vs_memmap"] = out["memmap_s_per_sample"] / out["loader_s_per_sample"]
    elif what == "verify":
        from lplkit.store import verify_store

        t = time.perf_counter()
        report = verify_store(url)
        out["verify_s"] = time.perf_counter() - t
        out["verify_ok"] = bool(getattr(report, "ok", True))
    return out


def run_child(what: str, url: str, npy: str, samples: int, cold: bool) -> dict[str, Any]:
    how = drop_cache([url, npy]) if cold else "warm"
    cmd = [sys.executable, __file__, "--child", what, "--url", url, "--npy", npy]
    cmd += ["--samples", str(samples)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["cache"] = how
    print(f"  {what:22s} {how:16s} {out}", flush=True)
    return out


ROWS = [  # (label, key, field, format): one table row per figure
    ("`open`, cold (s)", "open_cold", "open_s", "{:.2f}"),
    ("`open`, warm (s)", "open_warm", "open_s", "{:.2f}"),
    ("`open` resident memory (B/row)", "open_cold", "open_rss_per_row", "{:.0f}"),
    ("first batch, cold (s)", "first_batch_cold", "first_batch_s", "{:.2f}"),
    ("  memmap first batch, cold (s)", "first_batch_memmap_cold", "first_batch_memmap_s", "{:.2f}"),
    ("first batch, warm (s)", "first_batch_warm", "first_batch_s", "{:.2f}"),
    ("  memmap first batch, warm (s)", "first_batch_memmap_warm", "first_batch_memmap_s", "{:.2f}"),
    ("LatentDataset, 0 workers, time/sample vs memmap", "dataset_0w", "vs_memmap", "{:.2f}x"),
    ("LatentDataset, 2 workers, time/sample vs memmap", "dataset_2w", "vs_memmap", "{:.2f}x"),
    ("full verify, cold (s)", "verify_cold", "verify_s", "{:.1f}"),
]


def table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Markdown: one row per figure, before / after per size."""
    sizes = list(after["sizes"])
    head = "| | " + " | ".join(f"{int(n):,} rows before / after" for n in sizes) + " |"
    lines = [head, "| --- |" + " --- |" * len(sizes)]
    for label, key, field, form in ROWS:
        cells = []
        for n in sizes:
            pair = []
            for res in (before, after):
                v = res["sizes"].get(n, {}).get(key, {}).get(field)
                pair.append("-" if v is None else form.format(v))
            cells.append(" / ".join(pair))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _store_name(count: int, shape: tuple[int, ...], geometry: str) -> str:
    name = f"s{count}" if geometry == "rows" else f"s{count}-{geometry}"
    return name if shape == SHAPE else f"{name}_{'x'.join(map(str, shape))}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="100000,1000000,4000000")
    ap.add_argument("--dir", default="/tmp/lplkit-store-scale")
    ap.add_argument("--label", default="run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--samples", type=int, default=5120, help="samples per DataLoader measurement")
    ap.add_argument("--verify-max-rows", type=int, default=1_000_000)
    ap.add_argument("--skip", default="", help="comma-separated measurements to skip")
    ap.add_argument("--keep", action="store_true", help="keep the stores for another run")
    ap.add_argument("--wide-rows", default="", help="4x32x32 stores: steady state only")
    ap.add_argument("--steady-samples", type=int, default=25600,
                    help="samples timed in the steady-state comparison")  # fmt: skip
    ap.add_argument(
        "--geometry",
        choices=("rows", "bytes"),
        default="rows",
        help="rows: 1,024-row shards, 64-row chunks (layout 2); bytes: layout 3's default",
    )
    ap.add_argument(
        "--table",
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        default=None,
        help="print the markdown table of two result files and exit",
    )
    ap.add_argument("--child", default=None)
    ap.add_argument("--url", default=None)
    ap.add_argument("--npy", default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.npy, args.samples)))
        return
    if args.table:
        print(table(*[json.loads(Path(f).read_text()) for f in args.table]))
        return
    import lplkit

    skip = set(filter(None, args.skip.split(",")))
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "label": args.label,
        "lplkit": str(Path(lplkit.__file__).parent),
        "shape": SHAPE,
        "geometry": args.geometry,
        "batch": BATCH,
        "samples": args.samples,
        "sizes": {},
    }
    wide = (4, 32, 32)
    runs = [(int(r), SHAPE) for r in args.rows.split(",") if r]
    runs += [(int(r), wide) for r in args.wide_rows.split(",") if r]
    for count, shape in runs:
        name = _store_name(count, shape, args.geometry)
        url, npy = str(base / f"{name}.zarr"), str(base / f"{name}.npy")
        done = base / f"{name}.done"
        r: dict[str, Any] = {"shape": shape}
        if not done.exists():
            shutil.rmtree(url, ignore_errors=True)
            r["write_s"] = write_store(url, npy, count, args.geometry, shape=shape)
            done.write_text("ok")
        m = json.loads((Path(url) / "zarr.json").read_text())["attributes"]["lplkit"]
        r["shard_size"], r["chunk_size"] = m["shard_size"], m["chunk_size"]
        print(f"{count} rows of {shape} ({args.label})", flush=True)
        if shape != SHAPE:  # the wide latents: steady state only
            warm_cache([url, npy])
            r["steady"] = run_child("steady", url, npy, args.steady_samples, False)
            results["sizes"][name] = r
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
            continue
        for cold in (True, False):
            tag = "cold" if cold else "warm"
            if "open" not in skip:
                r[f"open_{tag}"] = run_child("open", url, npy, args.samples, cold)
            if "first_batch" not in skip:
                r[f"first_batch_{tag}"] = run_child("first_batch", url, npy, args.samples, cold)
                r[f"first_batch_memmap_{tag}"] = run_child(
                    "first_batch_memmap", url, npy, args.samples, cold
                )
        warm_cache([url, npy])  # the DataLoader rows compare warm store vs warm memmap
        if "steady" not in skip:
            r["steady"] = run_child("steady", url, npy, args.steady_samples, False)
        for w in (0, 2):
            if f"dataset_{w}" in skip:
                continue
            d = run_child(f"dataset_{w}", url, npy, args.samples, False)
            mm = run_child(f"dataset_memmap_{w}", url, npy, args.samples, False)
            r[f"dataset_{w}w"] = {**d, "memmap_s_per_sample": mm["s_per_sample"],
                                  "memmap_worker_rss": mm.get("worker_rss"),
                                  "vs_memmap": d["s_per_sample"] / mm["s_per_sample"]}  # fmt: skip
        if "verify" not in skip and count <= args.verify_max_rows:
            r["verify_cold"] = run_child("verify", url, npy, args.samples, True)
        results["sizes"][str(count)] = r
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if not args.keep:
        for count, shape in runs:
            name = _store_name(count, shape, args.geometry)
            shutil.rmtree(base / f"{name}.zarr", ignore_errors=True)
            for ext in ("npy", "done"):
                (base / f"{name}.{ext}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
