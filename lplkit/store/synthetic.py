"""Small stores of synthetic moments, written through `StoreWriter` (tests, benchmarks, demos).

Other modules' tests (stats, train) can build a real store without an autoencoder::

    moments = write_synthetic_store(tmp_path / "s.zarr", count=100, latent_shape=(4, 8, 8))
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from lplkit.store.format import new_manifest
from lplkit.store.writer import StoreWriter


def synthetic_moments(
    count: int, latent_shape: tuple[int, int, int], *, seed: int = 0
) -> np.ndarray:
    """float32 `(count, 2, C, h, w)`: mean ~ N(0, 1), std ~ U(0.05, 0.5)."""
    rng = np.random.default_rng(seed)
    m = np.empty((count, 2, *latent_shape), dtype=np.float32)
    m[:, 0] = rng.standard_normal((count, *latent_shape), dtype=np.float32)
    m[:, 1] = 0.05 + 0.45 * rng.random((count, *latent_shape), dtype=np.float32)
    return m


def write_synthetic_store(
    url: Any,
    *,
    count: int,
    latent_shape: tuple[int, int, int] = (4, 8, 8),
    flips: bool = False,
    dtype: str = "float16",
    shard_size: int = 32,
    chunk_size: int = 8,
    codec: str = "none",
    skipped: Iterable[int] = (),
    num_classes: int = 10,
    seed: int = 0,
    autoencoder: dict[str, Any] | None = None,
    finalize: bool = True,
    moments: np.ndarray | None = None,
    moments_flip: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Write a complete store; returns the float32 arrays written ("moments", "moments_flip", "labels").

    Positions in `skipped` are recorded as skipped (stored as zeros, status "skipped"). `moments` /
    `moments_flip` replace the random ones (float32 `(count, 2, C, h, w)`).
    """
    manifest = new_manifest(
        autoencoder=autoencoder
        or {"id": "synthetic", "class": "AutoencoderKL", "config_hash": "0"},
        resolution=8 * latent_shape[1],
        latent_shape=latent_shape,
        source={"id": "synthetic", "split": "train", "revision": None, "count": count},
        dtype=dtype,
        flips=flips,
        shard_size=shard_size,
        chunk_size=chunk_size,
        codec=codec,
    )
    if moments is None:
        moments = synthetic_moments(count, latent_shape, seed=seed)
    moments = np.array(moments, dtype=np.float32)
    flip = None
    if flips:
        flip = (
            moments_flip
            if moments_flip is not None
            else synthetic_moments(count, latent_shape, seed=seed + 1)
        )
        flip = np.array(flip, dtype=np.float32)
    labels = (np.arange(count) % num_classes).astype(np.int32)
    skip = set(int(s) for s in skipped)
    with StoreWriter.create_or_resume(str(url), manifest) as writer:
        for s in writer.pending_shards():
            lo, hi = writer.shard_range(s)
            rows = [
                {
                    "key": f"img_{p:06d}",
                    "status": "skipped" if p in skip else "ok",
                    "reason": "synthetic skip" if p in skip else None,
                }
                for p in range(lo, hi)
            ]
            writer.write_shard(
                s, moments[lo:hi], None if flip is None else flip[lo:hi], labels[lo:hi], rows
            )
        if finalize:
            writer.finalize()
    for p in skip:
        moments[p] = 0.0
        if flip is not None:
            flip[p] = 0.0
    out = {"moments": moments, "labels": labels}
    if flip is not None:
        out["moments_flip"] = flip
    return out
