"""The synthetic store writer: `stream_synthetic_store` holds one shard at a time (issue #27)."""

from __future__ import annotations

import tracemalloc

import numpy as np

from lplkit.store import LatentStore
from lplkit.store.synthetic import shard_moments, stream_synthetic_store

# -- the synthetic writer ---------------------------------------------------------------------------


def test_streaming_synthetic_writer_holds_one_shard(tmp_path):
    shard, shards, latent = 256, 24, (4, 16, 16)
    shard_bytes = shard * 2 * int(np.prod(latent)) * 4  # float32 moments of one shard: 2 MiB
    seen = []
    # the writer's first call imports torch, pyarrow's pandas bridge...: not the shard's memory
    stream_synthetic_store(tmp_path / "warm.zarr", count=8, latent_shape=latent, shard_size=8)
    tracemalloc.start()
    try:
        stream_synthetic_store(
            tmp_path / "s.zarr",
            count=shard * shards,
            latent_shape=latent,
            shard_size=shard,
            chunk_size=64,
            on_shard=lambda lo, hi, m, f: seen.append((lo, float(m[0, 0, 0, 0, 0]))),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [lo for lo, _ in seen] == list(range(0, shard * shards, shard))
    # every shard's float32 rows, its fp16 copy, zarr's buffer: a few shards' bytes, never all 24
    assert peak < 3 * shard_bytes, (peak, shard_bytes)  # measured: 2.2
    store = LatentStore.open(str(tmp_path / "s.zarr"))
    mean, _ = store.read([shard * 5 + 1])
    expected = shard_moments(0, 5, shard, latent)[1, 0].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(mean[0], expected)
