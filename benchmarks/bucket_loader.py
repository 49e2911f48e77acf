"""bucket_loader (issue #25): the shuffled training loader on a bucketed store vs a square store of
the same stored bytes, measured within one run.

The bucketed store holds rows of several SDXL buckets at `--res` (latents `res/8` on the long
sides' scale, SD-VAE 4 channels, fp16 moments); the square store holds `res x res` rows, as many as
give the same total stored bytes. Each is read by `LatentStore.batches` (batch `--batch`, whole
store in RAM after a warm-up epoch, every batch from one bucket for the bucketed store), repeats
interleaved, best of; samples/s and stored MiB/s of each and their ratios.

    OMP_NUM_THREADS=1 python benchmarks/bucket_loader.py [--res 256 --rows 4096 --batch 64] --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

#: (W, H) pixels at 1024^2 from SDXL's list (the square one and four aspects), scaled to --res
BUCKETS_1024 = [(1024, 1024), (1152, 896), (896, 1152), (1344, 768), (768, 1344)]
SHARE = [0.4, 0.2, 0.2, 0.1, 0.1]  # of the rows: mostly square, as in photo sets


def _sizes(res: int) -> list[tuple[int, int]]:
    return [
        (round(w * res / 1024 / 16) * 16, round(h * res / 1024 / 16) * 16) for w, h in BUCKETS_1024
    ]


def _row_bytes(w: int, h: int) -> int:
    return 2 * 4 * (h // 8) * (w // 8) * 2  # (mean, std) x C x h x w x fp16


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--rows", type=int, default=4096, help="rows of the bucketed store")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from lplkit.store import LatentStore
    from lplkit.store.synthetic import write_synthetic_bucketed_store, write_synthetic_store

    sizes = _sizes(args.res)
    rows = [round(s * args.rows) for s in SHARE]
    bucket_bytes = sum(n * _row_bytes(w, h) for n, (w, h) in zip(rows, sizes, strict=True))
    square_rows = round(bucket_bytes / _row_bytes(args.res, args.res))
    with tempfile.TemporaryDirectory() as tmp:
        bucketed, square = f"{tmp}/b.zarr", f"{tmp}/s.zarr"
        write_synthetic_bucketed_store(bucketed, sizes=sizes, rows=rows, shard_size=1024)
        side = args.res // 8
        write_synthetic_store(square, count=square_rows, latent_shape=(4, side, side),
                              shard_size=1024, chunk_size=64)  # fmt: skip
        stores = {"square": LatentStore.open(square), "bucketed": LatentStore.open(bucketed)}
        for s in stores.values():  # warm: page cache, the RAM copies (a bucket's short first
            for e in range(2):  # epoch may end before its RAM copy is in: two epochs)
                list(s.batches(args.batch, seed=0, epoch=e))
        rates: dict[str, list[float]] = {k: [] for k in stores}
        served: dict[str, int] = {}
        for r in range(args.repeats):
            for k, s in stores.items():
                t = time.perf_counter()
                n = sum(len(b[0]) for b in s.batches(args.batch, seed=r + 1))
                rates[k].append(n / (time.perf_counter() - t))
                served[k] = n
    best = {k: max(v) for k, v in rates.items()}
    per_row = {"square": _row_bytes(args.res, args.res), "bucketed": bucket_bytes / sum(rows)}
    mib = {k: best[k] * per_row[k] / 2**20 for k in best}
    out = {
        "res": args.res,
        "batch": args.batch,
        "buckets": [{"size": list(s), "rows": n} for s, n in zip(sizes, rows, strict=True)],
        "rows": {"square": square_rows, "bucketed": sum(rows)},
        "stored_mib": {
            "square": round(square_rows * per_row["square"] / 2**20, 2),
            "bucketed": round(bucket_bytes / 2**20, 2),
        },
        "rows_per_epoch": served,
        "samples_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "best_samples_per_s": {k: round(v, 1) for k, v in best.items()},
        "best_mib_per_s": {k: round(v, 1) for k, v in mib.items()},
        "ratio_samples": round(best["bucketed"] / best["square"], 3),
        "ratio_bytes": round(mib["bucketed"] / mib["square"], 3),
    }
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
