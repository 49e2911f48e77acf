"""Single rows read straight from raw shard files (`ShardRows`) equal zarr's reads of the same
positions, for each stored dtype, with all-zero chunks and shards zarr never stored and a partial
last chunk; compressed stores keep zarr; `LatentDataset` over a store larger than `memory_budget`
in a 2-worker DataLoader serves every ok row once per epoch with the single-process items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from lplkit.store import LatentStore
from lplkit.store import format as fmt
from lplkit.store.synthetic import write_synthetic_store

N = 45  # shards of 16 (last one 13 rows), chunks of 4 (last one partial)
SKIPPED = [*range(8, 12), *range(16, 32)]  # one whole chunk and one whole shard: never stored


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_rows_equal_zarr(tmp_path, dtype):
    url = str(tmp_path / "s.zarr")
    write_synthetic_store(url, count=N, latent_shape=(2, 2, 3), flips=True, dtype=dtype,
                          shard_size=16, chunk_size=4, skipped=SKIPPED)  # fmt: skip
    assert not (tmp_path / "s.zarr/moments/c/1").exists()  # the all-zero shard is not stored
    store = LatentStore.open(url, memory_budget=1)
    assert store.reads_rows
    for name, flip in ((fmt.MOMENTS, False), (fmt.MOMENTS_FLIP, True)):
        want = fmt.from_storage(zarr.open_array(f"{url}/{name}", mode="r")[:], dtype)
        for pos in ([0], [44, 3, 9, 20, 43, 1], list(range(N))[::-1][:32]):
            mean, std = store.read(pos, flip=flip)
            np.testing.assert_array_equal(mean, want[pos, 0])
            np.testing.assert_array_equal(std, want[pos, 1])
        chunks = np.array([0, 2, 5, 11])  # whole chunks (the stored-as-zeros one, the last partial)
        block = store._load(chunks)
        got = fmt.from_storage(block.raw[name], dtype)
        rows = np.concatenate([np.arange(c * 4, c * 4 + 4) for c in chunks])
        keep = rows < N
        np.testing.assert_array_equal(got[keep], want[rows[keep]])


def test_compressed_store_reads_chunks(tmp_path):
    url = str(tmp_path / "s.zarr")
    write_synthetic_store(url, count=20, latent_shape=(2, 2, 2), codec="zstd", shard_size=8,
                          chunk_size=4)  # fmt: skip
    assert not LatentStore.open(url).reads_rows


@pytest.mark.parametrize("budget", [1, 1 << 30])  # far below the store / holds it all
def test_dataset_in_two_workers_serves_every_row_once(tmp_path, budget):
    url = str(tmp_path / "s.zarr")
    write_synthetic_store(url, count=N, latent_shape=(2, 2, 3), flips=True, shard_size=16,
                          chunk_size=4, skipped=SKIPPED)  # fmt: skip
    ds = LatentStore.open(url, memory_budget=budget).as_dataset(seed=1)
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    batches = list(loader)
    got = torch.cat([b["position"] for b in batches]).tolist()
    assert sorted(got) == [p for p in range(N) if p not in SKIPPED]
    single = LatentStore.open(url).as_dataset(seed=1)  # no workers, whole store in RAM
    by_pos = {single[i]["position"]: single[i]["latent"] for i in range(len(single))}
    latents = torch.cat([b["latent"] for b in batches])
    for p, z in zip(got, latents, strict=True):
        assert torch.equal(z, by_pos[p])
