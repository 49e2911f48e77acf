"""Cost of `lplkit stats` relative to the decoder passes it cannot avoid, measured in one run.

Times, on the same items and batches: (a) reading + sampling latents + `DecoderTaps` forward only,
(b) `compute_stats` (the same plus the float64 moment / histogram accumulators and the pilot pass).
Prints the ratio b / a, items/s and (CUDA) peak memory of each. With --check, also compares the
statistics computed on --device with those computed on CPU for a small store.

    python benchmarks/stats_overhead.py --ae tiny --device cpu --items 32 --latent 8
    python benchmarks/stats_overhead.py --ae sd --device cuda --items 256 --latent 32 --batch 32 --check
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from random_autoencoders import random_autoencoder


class ArrayStore:
    """In-memory stand-in for `LatentStore` (manifest, ok_positions, read): keeps store I/O and
    pyarrow versions out of a measurement of the statistics themselves."""

    def __init__(self, count: int, latent: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        shape = (count, 4, latent, latent)
        self.mean = rng.standard_normal(shape, dtype=np.float32)
        self.std = rng.uniform(0.05, 0.5, shape).astype(np.float32)
        self.manifest = {"flips": False, "latent_shape": [4, latent, latent]}
        self.ok_positions = np.arange(count, dtype=np.int64)

    def read(self, indices, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        return self.mean[idx], self.std[idx]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


@torch.no_grad()
def taps_only(store, taps, items: np.ndarray, batch: int, device: str) -> None:
    from lplkit.stats.compute import item_latents

    for s in range(0, len(items), batch):
        taps(item_latents(store, items[s : s + batch], seed=0).to(device))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ae", choices=("sd", "tiny"), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--check", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as JSON (last line)")
    a = p.parse_args()
    from lplkit.lpl.decoder_taps import DecoderTaps
    from lplkit.stats.compute import compute_stats, select_items

    with tempfile.TemporaryDirectory() as tmp:
        vae = random_autoencoder(a.ae)
        store = ArrayStore(a.items, a.latent)
        taps = DecoderTaps(vae, a.depth).to(a.device)
        items = select_items(store.ok_positions, flips=False, samples=None, seed=0)
        taps_only(store, taps, items[: a.batch], a.batch, a.device)  # warm-up (cudnn, allocator)
        compute_stats(store, taps, batch_size=a.batch, device=a.device, pilot=4)
        results = {}
        for name in ("taps", "stats", "taps", "stats"):  # interleaved, best of 2
            reset_peak(a.device)
            sync(a.device)
            t0 = time.perf_counter()
            if name == "taps":
                taps_only(store, taps, items, a.batch, a.device)
            else:
                compute_stats(store, taps, batch_size=a.batch, device=a.device)
            sync(a.device)
            dt = time.perf_counter() - t0
            best = results.get(name, (float("inf"), 0.0))
            results[name] = (min(best[0], dt), max(best[1], peak_gib(a.device)))
        (ta, ma), (tb, mb) = results["taps"], results["stats"]
        print(f"device={a.device} ae={a.ae} latent={a.latent} items={a.items} batch={a.batch} "
              f"depth={taps.depth} layers={[i.name for i in taps.layers]}")  # fmt: skip
        print(f"taps only : {ta:.3f} s  {a.items / ta:8.1f} items/s  peak {ma:.2f} GiB")
        print(f"stats     : {tb:.3f} s  {a.items / tb:8.1f} items/s  peak {mb:.2f} GiB")
        print(f"ratio stats / taps-only = {tb / ta:.3f}")
        if a.check and a.device != "cpu":
            check(Path(tmp), a.device)
        if a.json:
            print(json.dumps({
                "args": vars(a), "depth": taps.depth, "layers": [i.name for i in taps.layers],
                "taps_s": ta, "stats_s": tb, "taps_items_per_s": a.items / ta,
                "stats_items_per_s": a.items / tb, "ratio_stats_over_taps": tb / ta,
                "peak_gib_taps": ma, "peak_gib_stats": mb,
            }))  # fmt: skip


def check(root: Path, device: str) -> None:
    """Small store: statistics on `device` vs on CPU (same items, same noise)."""
    from lplkit.lpl.decoder_taps import DecoderTaps
    from lplkit.stats.compute import compute_stats

    vae = random_autoencoder("tiny")
    store = ArrayStore(40, 8)
    cpu = compute_stats(store, DecoderTaps(vae), batch_size=8, device="cpu", pilot=4)
    dev = compute_stats(store, DecoderTaps(vae).to(device), batch_size=8, device=device, pilot=4)
    worst = 0.0
    for a, b in zip(cpu.layers, dev.layers, strict=True):
        for f in ("mean", "std", "q_low", "q_high"):
            x, y = getattr(a, f), getattr(b, f)
            worst = max(worst, float(((x - y).abs() / (x.abs() + 1e-3)).max()))
        bound = float(a.q_error_bound.max())
        q_diff = float(torch.maximum((a.q_low - b.q_low).abs(), (a.q_high - b.q_high).abs()).max())
        print(f"check {a.name}: max |q cpu - q {device}| = {q_diff:.2e} (bin width {bound:.2e})")
    lat = float((cpu.latent_mean - dev.latent_mean).abs().max())
    print(f"check: latent mean max diff {lat:.2e}; worst relative feature-stat diff {worst:.2e}")


if __name__ == "__main__":
    main()
