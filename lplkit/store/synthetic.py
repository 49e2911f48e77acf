"""Small stores of synthetic moments, written through `StoreWriter` (tests, benchmarks, demos).

Other modules' tests (stats, train) can build a real store without an autoencoder::

    moments = write_synthetic_store(tmp_path / "s.zarr", count=100, latent_shape=(4, 8, 8))

`stream_synthetic_store` writes stores of any size (benchmarks/store_scale.py) holding one shard's
rows at a time: each shard's moments are drawn from their own generator (seed, shard).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from lplkit.store.format import DEFAULT_CHUNK_BYTES, new_manifest
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


def shard_moments(
    seed: int, shard: int, rows: int, latent_shape: tuple[int, int, int]
) -> np.ndarray:
    """float32 `(rows, 2, C, h, w)` of one shard, from generator `(seed, shard)`: mean ~ N(0, 1),
    std ~ U(0.05, 0.5). The same shard's rows whatever the other shards are."""
    rng = np.random.default_rng([seed, shard])
    m = np.empty((rows, 2, *latent_shape), np.float32)
    m[:, 0] = rng.standard_normal((rows, *latent_shape), dtype=np.float32)
    m[:, 1] = 0.05 + 0.45 * rng.random((rows, *latent_shape), dtype=np.float32)
    return m


#: `moments_of(shard, lo, hi, flipped)` -> float32 `(hi - lo, 2, C, h, w)`: one shard's moments
MomentsFn = Callable[[int, int, int, bool], np.ndarray]
#: `on_shard(lo, hi, moments, moments_flip)`: called after each shard is written
ShardFn = Callable[[int, int, np.ndarray, "np.ndarray | None"], None]


def stream_synthetic_store(
    url: Any,
    *,
    count: int,
    latent_shape: tuple[int, int, int] = (4, 8, 8),
    flips: bool = False,
    dtype: str = "float16",
    shard_size: int | None = None,
    chunk_size: int | None = None,
    shard_mb: float | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    codec: str = "none",
    captions: bool = False,
    skipped: Iterable[int] = (),
    num_classes: int = 10,
    seed: int = 0,
    autoencoder: dict[str, Any] | None = None,
    finalize: bool = True,
    moments_of: MomentsFn | None = None,
    on_shard: ShardFn | None = None,
) -> dict[str, Any]:
    """Write a store one shard at a time through `StoreWriter`; returns its manifest.

    A shard's moments come from `moments_of` (default: `shard_moments(seed, shard)`, the flip copy
    from `seed + 1`) and are dropped once written and passed to `on_shard`. Label of row p =
    p % num_classes, key `img_{p:06d}` (caption `caption {p}` with `captions`); rows in `skipped` are recorded as skipped (zeros). Geometry:
    `format.store_geometry` (bytes unless `shard_size` rows are given).
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
        shard_mb=shard_mb,
        chunk_bytes=chunk_bytes,
        codec=codec,
    )

    def drawn(shard: int, lo: int, hi: int, flipped: bool) -> np.ndarray:
        return shard_moments(seed + int(flipped), shard, hi - lo, latent_shape)

    get = moments_of or drawn
    skip = set(int(s) for s in skipped)
    with StoreWriter.create_or_resume(str(url), manifest) as writer:
        for s in writer.pending_shards():
            lo, hi = writer.shard_range(s)
            moments = get(s, lo, hi, False)
            flip = get(s, lo, hi, True) if flips else None
            labels = (np.arange(lo, hi) % num_classes).astype(np.int32)
            rows = [
                {
                    "key": f"img_{p:06d}",
                    "status": "skipped" if p in skip else "ok",
                    "reason": "synthetic skip" if p in skip else None,
                    "caption": f"caption {p}" if captions else None,
                }
                for p in range(lo, hi)
            ]
            writer.write_shard(s, moments, flip, labels, rows)
            if on_shard is not None:
                on_shard(lo, hi, moments, flip)
            del moments, flip, rows
        if finalize:
            writer.finalize()
        return dict(writer.manifest)


def write_synthetic_store(
    url: Any,
    *,
    count: int,
    latent_shape: tuple[int, int, int] = (4, 8, 8),
    flips: bool = False,
    dtype: str = "float16",
    shard_size: int | None = 32,
    chunk_size: int | None = 8,
    codec: str = "none",
    skipped: Iterable[int] = (),
    num_classes: int = 10,
    seed: int = 0,
    autoencoder: dict[str, Any] | None = None,
    finalize: bool = True,
    moments: np.ndarray | None = None,
    moments_flip: np.ndarray | None = None,
    shard_mb: float | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    captions: bool = False,
) -> dict[str, np.ndarray]:
    """Write a complete store; returns the float32 arrays written ("moments", "moments_flip", "labels").

    Positions in `skipped` are recorded as skipped (stored as zeros, status "skipped"). `moments` /
    `moments_flip` replace the random ones (float32 `(count, 2, C, h, w)`). The whole arrays are
    held in memory (they are returned); `stream_synthetic_store` holds one shard.
    """
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
    held = {False: moments, True: flip}
    stream_synthetic_store(
        url,
        count=count,
        latent_shape=latent_shape,
        flips=flips,
        dtype=dtype,
        shard_size=shard_size,
        chunk_size=chunk_size,
        shard_mb=shard_mb,
        chunk_bytes=chunk_bytes,
        codec=codec,
        captions=captions,
        skipped=skipped,
        num_classes=num_classes,
        autoencoder=autoencoder,
        finalize=finalize,
        moments_of=lambda s, lo, hi, flipped: held[flipped][lo:hi],  # type: ignore[index]
    )
    labels = (np.arange(count) % num_classes).astype(np.int32)
    for p in set(int(s) for s in skipped):
        moments[p] = 0.0
        if flip is not None:
            flip[p] = 0.0
    out = {"moments": moments, "labels": labels}
    if flip is not None:
        out["moments_flip"] = flip
    return out


def write_synthetic_bucketed_store(
    url: Any,
    *,
    sizes: Sequence[tuple[int, int]],
    rows: Sequence[int],
    channels: int = 4,
    factor: int = 8,
    flips: bool = False,
    dtype: str = "float16",
    shard_size: int | None = 32,
    codec: str = "none",
    skipped: Iterable[int] = (),
    num_classes: int = 10,
    seed: int = 0,
    captions: bool = False,
    finalize: bool = True,
) -> list[dict[str, np.ndarray]]:
    """Write a complete bucketed store (lplkit.store.buckets): bucket b of image size `sizes[b]`
    = (W, H) pixels (latents (channels, H // factor, W // factor)) holds `rows[b]` rows; returns
    per bucket the float32 arrays written ("moments", ["moments_flip"], "labels").

    Global position p (bucket b's row p - start_b) has label p % num_classes, key `img_{p:06d}`
    (caption `caption {p}` with `captions`); global positions in `skipped` are recorded skipped
    (zeros). Bucket b's moments come from `synthetic_moments(rows[b], ..., seed=seed + 2 * b)`
    (the flip copy from seed + 2 * b + 1).
    """
    from lplkit.store.bucketed import BucketedWriter, bucketed_manifest
    from lplkit.store.buckets import Bucket

    if len(sizes) != len(rows):
        raise ValueError("one row count per bucket size")
    buckets, start = [], 0
    for b, ((w, h), n) in enumerate(zip(sizes, rows, strict=True)):
        buckets.append(
            Bucket(b, (int(w), int(h)), (channels, h // factor, w // factor), int(n), start)
        )
        start += int(n)
    res = round(np.sqrt(np.mean([w * h for w, h in sizes])) / factor) * factor
    root = new_manifest(
        autoencoder={"id": "synthetic", "class": "AutoencoderKL", "config_hash": "0",
                     "downsample_factor": factor, "latent_channels": channels},
        resolution=res,
        latent_shape=(channels, res // factor, res // factor),
        source={"id": "synthetic", "split": "train", "revision": None, "count": start},
        dtype=dtype,
        flips=flips,
        codec=codec,
    )  # fmt: skip
    skip = set(int(s) for s in skipped)
    out: list[dict[str, np.ndarray]] = []
    with BucketedWriter.create_or_resume(
        str(url), bucketed_manifest(root, buckets), shard_size=shard_size
    ) as writer:
        for bucket, sub in zip(buckets, writer.writers, strict=True):
            moments = synthetic_moments(bucket.rows, bucket.latent_shape, seed=seed + 2 * bucket.id)
            flip = (
                synthetic_moments(bucket.rows, bucket.latent_shape, seed=seed + 2 * bucket.id + 1)
                if flips
                else None
            )
            glob = bucket.start + np.arange(bucket.rows)
            labels = (glob % num_classes).astype(np.int32)
            for s in sub.pending_shards():
                lo, hi = sub.shard_range(s)
                shard_rows = [
                    {
                        "key": f"img_{p:06d}",
                        "status": "skipped" if p in skip else "ok",
                        "reason": "synthetic skip" if p in skip else None,
                        "caption": f"caption {p}" if captions else None,
                    }
                    for p in glob[lo:hi].tolist()
                ]
                sub.write_shard(s, moments[lo:hi], None if flip is None else flip[lo:hi],
                                labels[lo:hi], shard_rows)  # fmt: skip
            gone = [
                p - bucket.start for p in skip if bucket.start <= p < bucket.start + bucket.rows
            ]
            moments[gone] = 0.0
            arrays = {"moments": moments, "labels": labels}
            if flip is not None:
                flip[gone] = 0.0
                arrays["moments_flip"] = flip
            out.append(arrays)
        if finalize:
            writer.finalize()
    return out
