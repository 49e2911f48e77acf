"""store_dataset: `LatentStore.batches` vs the same batches through torch's DataLoader
(`LatentBatches`) vs the map-style `LatentDataset` with DataLoader batching (samples/s, best of 3).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/store_dataset.py [--count 4096] [--batch 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from torch.utils.data import DataLoader

from lplkit.store import LatentBatches, LatentStore
from lplkit.store.synthetic import write_synthetic_store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        write_synthetic_store(f"{d}/s.zarr", count=args.count, latent_shape=(4, 32, 32),
                              shard_size=1024, chunk_size=64)  # fmt: skip
        store = LatentStore.open(f"{d}/s.zarr")
        list(store.batches(args.batch, seed=0))  # loads the store into RAM once
        ways = {
            "store.batches": lambda: store.batches(args.batch, seed=0),
            "DataLoader(LatentBatches)": lambda: DataLoader(
                LatentBatches(store, args.batch, seed=0), batch_size=None
            ),
            "DataLoader(LatentDataset)": lambda: DataLoader(
                store.as_dataset(), batch_size=args.batch
            ),
        }
        for name, make in ways.items():
            best, n = float("inf"), 0
            for _ in range(3):
                t = time.perf_counter()
                n = sum(len(b["latent"] if isinstance(b, dict) else b[0]) for b in make())
                best = min(best, time.perf_counter() - t)
            print(f"{name}: {n / best:.0f} samples/s")


if __name__ == "__main__":
    main()
