"""store_read: training batches from the latent store vs np.memmap vs one .npy per sample.

All three deliver the same thing per batch of 256: random samples (an epoch permutation), moments
float16 -> float32, `z = mean + std * eps` with a seeded torch generator, on one thread. Ratios are
measured in one run (files are in the page cache for all three). Extra rows:

- `store_ram_cached_{T}thr`: the store's loader sampling on `--threads` threads (bitwise the same
  batches as on one); its ratios are against the one-thread baselines;
- `noise_only`: the eps draws alone (`torch.randn` of a batch): the ceiling of any sampled loader;
- `gather_*`: the layouts without sampling: random batches of float32 (mean, std) from
  `LatentStore.read` (store in RAM), the memmap, and one `.npy` per sample.

Also reports, per codec and inner-chunk size, stored bytes/sample, compression ratio and write
throughput (`--no-codecs` skips it).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/store_read.py [--count 20000] [--repeats 3] [--json]

Each method runs `--repeats` times, interleaved, and the fastest run counts (the machine is shared:
best-of is the least noisy estimate). Wall time and process CPU time are both reported.

The moments are synthetic but latent-like: the mean is a spatially smoothed Gaussian field and the
std log-normal around 0.05 (real SD-VAE std values sit in a narrow range, as here).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from lplkit.store import LatentStore
from lplkit.store.synthetic import write_synthetic_store

SHAPE = (4, 32, 32)
BATCH = 256


def latent_like(count: int, seed: int = 0) -> np.ndarray:
    """float32 (count, 2, C, h, w): smoothed N(0, 1) means, log-normal stds (~0.05)."""
    rng = np.random.default_rng(seed)
    m = np.empty((count, 2, *SHAPE), np.float32)
    noise = rng.standard_normal((count, *SHAPE), dtype=np.float32)
    smooth = (
        noise + np.roll(noise, 1, -1) + np.roll(noise, 1, -2) + np.roll(noise, (1, 1), (-2, -1))
    ) / 2
    m[:, 0] = smooth
    m[:, 1] = np.exp(rng.normal(-3.0, 0.3, (count, *SHAPE))).astype(np.float32)
    return m


class Sampler:
    """The loader's arithmetic on gathered float16 moments: decode into a reused float32 buffer,
    then z = eps * std + mean with eps drawn in place into the (fresh) output tensor."""

    def __init__(self) -> None:
        self.m32 = torch.empty((BATCH, 2, *SHAPE))

    def __call__(self, x16: np.ndarray, g: torch.Generator) -> torch.Tensor:
        self.m32.copy_(torch.from_numpy(x16))
        z = torch.empty((BATCH, *SHAPE))
        z.normal_(generator=g)
        return z.mul_(self.m32[:, 1]).add_(self.m32[:, 0])


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def store_run(url: str, budget: int | None, cached: bool, threads: int = 1):
    """One epoch of store.batches from a fresh LatentStore (cached: after a warm-up epoch)."""
    kw = {"threads": threads} | ({} if budget is None else {"memory_budget": budget})
    store = LatentStore.open(url, **kw)
    if cached:
        for _ in store.batches(BATCH, seed=0, epoch=1):
            pass

    def run() -> None:
        for _ in store.batches(BATCH, seed=0, epoch=0):
            pass

    return run, store.num_batches(BATCH) * BATCH


def memmap_run(path: Path, count: int):
    mm = np.lib.format.open_memmap(path, mode="r")
    perm = np.random.default_rng(0).permutation(count)
    nb, sample = count // BATCH, Sampler()

    def run() -> None:
        for j in range(nb):
            sample(mm[perm[j * BATCH : (j + 1) * BATCH]], torch.Generator().manual_seed(j))

    return run, nb * BATCH


def files_run(folder: Path, count: int, batches: int):
    perm = np.random.default_rng(0).permutation(count)
    sample = Sampler()

    def run() -> None:
        for j in range(batches):
            idx = perm[j * BATCH : (j + 1) * BATCH]
            sample(
                np.stack([np.load(folder / f"{i:07d}.npy") for i in idx]),
                torch.Generator().manual_seed(j),
            )

    return run, batches * BATCH


def gather_runs(url: str, root: Path, count: int, batches: int) -> dict:
    """Layout cost alone (no sampling): random batches of float32 (mean, std) from each layout
    (float16 -> float32 by torch everywhere: numpy's half conversion is ~3x slower)."""
    store = LatentStore.open(url)
    store.read([0])
    store._ram_block()  # the in-RAM steady state, as in store_ram_cached
    perm = np.random.default_rng(1).permutation(count)
    mm = np.lib.format.open_memmap(root / "moments.npy", mode="r")
    folder = root / "files"

    def run_store() -> None:
        for j in range(count // BATCH):
            store.read(perm[j * BATCH : (j + 1) * BATCH])

    def run_memmap() -> None:
        for j in range(count // BATCH):
            torch.from_numpy(mm[perm[j * BATCH : (j + 1) * BATCH]]).float()

    def run_files() -> None:
        for j in range(batches):
            idx = perm[j * BATCH : (j + 1) * BATCH]
            torch.from_numpy(np.stack([np.load(folder / f"{i:07d}.npy") for i in idx])).float()

    n_all = count // BATCH * BATCH
    return {
        "gather_store_read": (run_store, n_all),
        "gather_memmap": (run_memmap, n_all),
        "gather_per_file": (run_files, batches * BATCH),
    }


def noise_run(count: int):
    """The draws alone: torch.randn of one batch's eps, with one seeding per batch."""
    z = torch.empty((BATCH, *SHAPE))

    def run() -> None:
        for j in range(count // BATCH):
            z.normal_(generator=torch.Generator().manual_seed(j))

    return run, count // BATCH * BATCH


def codec_table(root: Path, moments: np.ndarray, repeats: int) -> list[dict]:
    """Per codec and inner chunk: stored bytes/sample, ratio, write rate, windowed read rate."""
    rows, n = [], len(moments)
    raw = n * moments[0].size * 2  # float16 bytes
    for codec, chunk in [
        ("none", 16),
        ("none", 64),
        ("none", 256),
        ("zstd", 64),
        ("blosc-zstd", 64),
    ]:
        url = str(root / f"c-{codec}-{chunk}.zarr")
        write = timed(
            partial(
                write_synthetic_store,
                url,
                count=n,
                latent_shape=SHAPE,
                moments=moments,
                shard_size=1024,
                chunk_size=chunk,
                codec=codec,
            )
        )
        stored = sum(f.stat().st_size for f in (Path(url) / "moments").rglob("*") if f.is_file())
        bpc = LatentStore.open(url).bytes_per_chunk
        # Windows of ~1 MiB x 16: the streaming path, where the chunk size matters.
        best = min(
            timed(store_run(url, 3 * 16 * max(bpc, 1 << 20), False)[0])[0] for _ in range(repeats)
        )
        nread = LatentStore.open(url).num_batches(BATCH) * BATCH
        rows.append(
            {
                "codec": codec,
                "chunk": chunk,
                "bytes_per_sample": stored / n,
                "ratio": raw / stored,
                "write_samples_per_s": n / write[0],
                "windowed_read_samples_per_s": nread / best,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument(
        "--file-batches", type=int, default=12, help="batches timed for the per-file layout"
    )
    ap.add_argument("--codec-count", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=2, help="sampling threads of the extra store_ram_cached run"
    )
    ap.add_argument("--no-codecs", action="store_true", help="skip the codec table")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="lplkit-store-read-"))
    try:
        moments = latent_like(args.count)
        url = str(root / "store.zarr")
        write_s = timed(
            lambda: write_synthetic_store(
                url,
                count=args.count,
                latent_shape=SHAPE,
                moments=moments,
                shard_size=1024,
                chunk_size=64,
            )
        )[0]
        x16 = moments.astype(np.float16)
        np.save(root / "moments.npy", x16)
        (root / "files").mkdir()
        for i in range(args.count):
            np.save(root / "files" / f"{i:07d}.npy", x16[i])
        del x16
        store_bytes = LatentStore.open(url).n_chunks * LatentStore.open(url).bytes_per_chunk
        gather = gather_runs(url, root, args.count, args.file_batches)
        methods = {
            "memmap": lambda: memmap_run(root / "moments.npy", args.count),
            "per_file": lambda: files_run(root / "files", args.count, args.file_batches),
            "store_ram_incl_load": lambda: store_run(url, None, cached=False),
            "store_ram_cached": lambda: store_run(url, None, cached=True),
            "store_windows_1/8": lambda: store_run(url, store_bytes // 8, cached=False),
            f"store_ram_cached_{args.threads}thr": lambda: store_run(
                url, None, cached=True, threads=args.threads
            ),
            "noise_only": lambda: noise_run(args.count),
            **{k: (lambda v=v: v) for k, v in gather.items()},
        }
        best = {k: (np.inf, np.inf, 0) for k in methods}
        for _ in range(args.repeats):
            for name, make in methods.items():
                fn, n = make()
                wall, cpu = timed(fn)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu), n)
        r: dict = {
            "count": args.count,
            "repeats": args.repeats,
            "write_samples_per_s": args.count / write_s,
        }
        for name, (wall, cpu, n) in best.items():
            r[name] = {"samples_per_s": n / wall, "samples_per_cpu_s": n / cpu}
        compared = {  # every row against both baselines, so the docs' ratios are all in the JSON
            "memmap": ("memmap", "per_file"),
            "per_file": ("memmap", "per_file"),
            "noise_only": ("memmap", "per_file"),
            "store_ram_incl_load": ("memmap", "per_file"),
            "store_ram_cached": ("memmap", "per_file"),
            "store_windows_1/8": ("memmap", "per_file"),
            f"store_ram_cached_{args.threads}thr": ("memmap", "per_file"),
            "gather_store_read": ("gather_memmap", "gather_per_file"),
            "gather_memmap": ("gather_memmap", "gather_per_file"),
            "gather_per_file": ("gather_memmap", "gather_per_file"),
        }
        for name, bases in compared.items():
            for base in bases:
                key = base.removeprefix("gather_")
                r[name][f"vs_{key}"] = r[name]["samples_per_s"] / r[base]["samples_per_s"]
                r[name][f"vs_{key}_cpu"] = (
                    r[name]["samples_per_cpu_s"] / r[base]["samples_per_cpu_s"]
                )
        r["codecs"] = (
            [] if args.no_codecs else codec_table(root, moments[: args.codec_count], args.repeats)
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(f"{args.count} samples of {SHAPE} fp16, batches of {BATCH}, best of {args.repeats}")
    print(
        f"  {'method':22s} {'samples/s':>10s} {'per CPU s':>10s}  vs memmap (wall, cpu)  vs per-file (wall, cpu)"
    )
    for name in methods:
        m = r[name]
        line = f"  {name:22s} {m['samples_per_s']:10.0f} {m['samples_per_cpu_s']:10.0f}"
        if "vs_memmap" in m:
            line += f"  {m['vs_memmap']:5.2f}x {m['vs_memmap_cpu']:5.2f}x        "
            line += f"  {m['vs_per_file']:5.1f}x {m['vs_per_file_cpu']:5.1f}x"
        print(line)
    print(f"  writer: {r['write_samples_per_s']:.0f} samples/s")
    print("  codec       chunk  bytes/sample  ratio  write/s  windowed read/s")
    for c in r["codecs"]:
        print(
            f"  {c['codec']:10s} {c['chunk']:5d} {c['bytes_per_sample']:12.0f} {c['ratio']:6.3f} "
            f"{c['write_samples_per_s']:8.0f} {c['windowed_read_samples_per_s']:10.0f}"
        )


if __name__ == "__main__":
    main()
