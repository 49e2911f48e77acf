"""Stores written for tests, and a store read without lplkit's reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np

STORE_ARRAYS = ("moments", "moments_flip", "labels")


def read_store(path: Path) -> dict:
    """Everything a local store holds, read with zarr/pyarrow directly (not through lplkit's reader):
    its arrays (those present of STORE_ARRAYS), "index" (rows) and "manifest"."""
    import pyarrow.parquet as pq
    import zarr

    group = zarr.open_group(str(path), mode="r")
    out = {name: np.asarray(group[name][:]) for name in STORE_ARRAYS if name in group}
    out["index"] = pq.read_table(Path(path) / "index.parquet").to_pylist()
    out["manifest"] = dict(group.attrs["lplkit"])
    return out


STATS_STORE_N, STATS_STORE_SHARD = 12, 8
STATS_STORE_SKIPPED = {2, 9}  # skipped rows: zeros in the arrays, never used by stats


def write_stats_store(url: Path, vae_dir: Path) -> dict[str, np.ndarray]:
    """A finalized store (flips, STATS_STORE_N positions, STATS_STORE_SKIPPED skipped) of random
    moments for the statistics tests, recorded as encoded by `vae_dir`; returns the moments it wrote
    (zeros at the skipped positions)."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.store.synthetic import write_synthetic_store

    rng = np.random.default_rng(0)
    data = {}
    for name in ("moments", "moments_flip"):
        m = rng.standard_normal((STATS_STORE_N, 2, 4, 4, 4)).astype(np.float32) * 2 + 0.5
        m[:, 1] = rng.uniform(0.05, 0.6, (STATS_STORE_N, 4, 4, 4))
        data[name] = m
    written = write_synthetic_store(
        url,
        count=STATS_STORE_N,
        latent_shape=(4, 4, 4),
        flips=True,
        dtype="float32",
        shard_size=STATS_STORE_SHARD,
        skipped=STATS_STORE_SKIPPED,
        num_classes=1,
        autoencoder=autoencoder_info(load_autoencoder(str(vae_dir)), str(vae_dir)),
        moments=data["moments"],
        moments_flip=data["moments_flip"],
    )
    return {name: written[name] for name in data}


def write_exact_store(path: Path, vae_dir: Path, n: int = 32) -> Path:
    """A finalized store of `n` float32 moments (4, 8, 8) with std > 0, labels p % 3, recorded as
    encoded by `vae_dir`: the loader's draws follow each sample's place in the epoch order, so a
    K-rank run sees the latents of the 1-process run with the same global batch."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.store import StoreWriter, new_manifest
    from lplkit.store.synthetic import synthetic_moments

    moments = synthetic_moments(n, (4, 8, 8), seed=5)
    info = autoencoder_info(load_autoencoder(str(vae_dir)), str(vae_dir))
    manifest = new_manifest(autoencoder=info, resolution=32, latent_shape=(4, 8, 8),
                            source={"id": "exact", "split": "train", "revision": None, "count": n},
                            dtype="float32", shard_size=16, chunk_size=8, codec="none")  # fmt: skip
    labels = (np.arange(n) % 3).astype(np.int32)
    with StoreWriter.create_or_resume(str(path), manifest) as w:
        for s in w.pending_shards():
            lo, hi = w.shard_range(s)
            rows = [{"key": f"k{p}", "status": "ok", "reason": None} for p in range(lo, hi)]
            w.write_shard(s, moments[lo:hi], None, labels[lo:hi], rows)
        w.finalize()
    return path
