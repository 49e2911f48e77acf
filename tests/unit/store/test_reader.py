"""LatentStore.batches: coverage, determinism, resume, DDP split, sampling; in-RAM and windowed modes.

Labels are written as the position (num_classes = count) so each yielded sample names its source row.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lplkit.store import LatentStore
from lplkit.store import shuffle as shf
from lplkit.store.shuffle import NOISE_GROUP, batch_span, group_seed, num_batches, rng_for
from lplkit.store.synthetic import synthetic_moments, write_synthetic_store

COUNT, SHAPE, CHUNK = 203, (2, 4, 4), 4
SKIPPED = (0, 17, 18, 150)
OK = [p for p in range(COUNT) if p not in SKIPPED]


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("rd") / "s.zarr")
    write_synthetic_store(
        url,
        count=COUNT,
        latent_shape=SHAPE,
        shard_size=16,
        chunk_size=CHUNK,
        skipped=SKIPPED,
        num_classes=COUNT,
    )
    return url


@pytest.fixture(params=["ram", "windows"])
def store(request, store_url):
    """The same store read fully in RAM, or in windows of 3 chunks (budget = 3 windows < the store)."""
    s = LatentStore.open(store_url)
    if request.param == "windows":
        s = LatentStore.open(store_url, memory_budget=9 * s.bytes_per_chunk)
        assert s.window_chunks() == 3
    else:
        assert s.window_chunks() is None
    return s


def _positions(batches):
    return [b[1].tolist() for b in batches]


def test_every_ok_sample_once_per_epoch(store):
    for drop_last in (True, False):
        seen = [p for b in _positions(store.batches(16, seed=3, drop_last=drop_last)) for p in b]
        assert len(seen) == len(set(seen))
        assert set(seen) <= set(OK)
        expected = len(OK) if not drop_last else len(OK) // 16 * 16
        assert len(seen) == expected
    assert len(list(store.batches(16, seed=3))) == store.num_batches(16) == len(OK) // 16


def test_same_seed_same_batches_other_seed_or_epoch_differs(store):
    a = list(store.batches(16, seed=5, epoch=1))
    b = list(store.batches(16, seed=5, epoch=1))
    for (la, ya), (lb, yb) in zip(a, b, strict=True):
        assert torch.equal(la, lb) and torch.equal(ya, yb)
    assert _positions(store.batches(16, seed=6, epoch=1)) != _positions(a)
    assert _positions(store.batches(16, seed=5, epoch=2)) != _positions(a)
    unshuffled = [p for b in _positions(store.batches(16, seed=5, shuffle=False)) for p in b]
    assert unshuffled == OK[: len(unshuffled)]


@pytest.mark.parametrize("start", [1, 5, 11])
def test_resume_at_start_batch_gives_identical_tail(store, start):
    full = list(store.batches(16, seed=9, epoch=4))
    fresh = LatentStore.open(store.url, memory_budget=store.memory_budget)  # a new process's view
    tail = list(fresh.batches(16, seed=9, epoch=4, start_batch=start))
    assert len(tail) == len(full) - start
    for (la, ya), (lb, yb) in zip(full[start:], tail, strict=True):
        assert torch.equal(la, lb) and torch.equal(ya, yb)


@pytest.mark.parametrize(("world", "drop_last"), [(2, True), (3, True), (3, False), (4, False)])
def test_ddp_ranks_disjoint_covering_equal_counts(store, world, drop_last):
    per_rank = [
        [
            p
            for b in _positions(
                store.batches(8, seed=1, rank=r, world_size=world, drop_last=drop_last)
            )
            for p in b
        ]
        for r in range(world)
    ]
    counts = {
        len(list(store.batches(8, seed=1, rank=r, world_size=world, drop_last=drop_last)))
        for r in range(world)
    }
    assert counts == {store.num_batches(8, 0, world, drop_last)}
    allp = [p for ps in per_rank for p in ps]
    if drop_last:
        assert len(allp) == len(set(allp)) == len(OK) // (8 * world) * 8 * world
    else:  # the last global batch is padded from the epoch's start, so everything is covered
        assert set(allp) == set(OK)
        assert len(allp) - len(set(allp)) < 8 * world
    assert {len(ps) for ps in per_rank} == {len(per_rank[0])}


def test_rank_defaults_come_from_torch_distributed(store_url, tmp_path):
    import torch.distributed as dist

    store = LatentStore.open(store_url)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        assert _positions(store.batches(8, seed=2)) == _positions(
            store.batches(8, seed=2, rank=0, world_size=1)
        )
    finally:
        dist.destroy_process_group()


def test_windowed_order_is_block_shuffled(store_url):
    s = LatentStore.open(store_url)
    s = LatentStore.open(store_url, memory_budget=9 * s.bytes_per_chunk)
    plan = s.epoch_order(seed=0, epoch=0)
    assert sorted(plan.order.tolist()) == OK
    for k in range(len(plan.window_chunks)):
        window = plan.order[plan.window_starts[k] : plan.window_starts[k + 1]]
        assert set((window // CHUNK).tolist()) <= set(plan.window_chunks[k].tolist())
        assert len(plan.window_chunks[k]) <= 3


def test_latents_are_mean_plus_std_eps(store_url):
    """Standardised residuals (z - mean) / std over an epoch follow N(0, 1)."""
    store = LatentStore.open(store_url)
    mean_all, std_all = store.read(range(COUNT))  # oracle: direct reads of the stored moments
    eps = []
    for epoch in range(3):
        for z, pos in store.batches(16, seed=0, epoch=epoch):
            p = pos.numpy()
            eps.append(((z.numpy() - mean_all[p]) / std_all[p]).ravel())
    e = np.concatenate(eps)
    assert abs(e.mean()) < 5 / np.sqrt(len(e))
    assert abs(e.var() - 1) < 0.05
    # Two-sided tail mass matches the normal's: P(|e| > 1.96) = 0.05.
    assert abs((np.abs(e) > 1.96).mean() - 0.05) < 0.01


@pytest.mark.parametrize("window_chunks", [None, 2])
def test_std_zero_gives_exact_means_and_flips_are_picked_per_sample(tmp_path, window_chunks):
    """Latents must come from their own position's row, also across windows and the partial last chunk."""
    n = 62  # last chunk partial (2 of 4 rows)
    m = synthetic_moments(n, SHAPE, seed=4)
    mf = synthetic_moments(n, SHAPE, seed=5)
    m[:, 1] = 0.0
    mf[:, 1] = 0.0
    url = str(tmp_path / "f.zarr")
    write_synthetic_store(
        url,
        count=n,
        latent_shape=SHAPE,
        flips=True,
        moments=m,
        moments_flip=mf,
        shard_size=16,
        chunk_size=4,
        num_classes=n,
    )
    mean16, flip16 = (
        m[:, 0].astype(np.float16).astype(np.float32),
        mf[:, 0].astype(np.float16).astype(np.float32),
    )
    store = LatentStore.open(url)
    if window_chunks:
        store = LatentStore.open(url, memory_budget=3 * window_chunks * store.bytes_per_chunk)
        assert store.window_chunks() == window_chunks
    picked_flip = seen = 0
    for epoch in range(4):
        for z, pos in store.batches(8, seed=1, epoch=epoch, drop_last=False):
            for zi, p in zip(z.numpy(), pos.tolist(), strict=True):
                is_orig, is_flip = np.array_equal(zi, mean16[p]), np.array_equal(zi, flip16[p])
                assert is_orig != is_flip
                picked_flip += is_flip
                seen += 1
    assert seen == 4 * n
    assert 0.4 < picked_flip / seen < 0.6


def test_tiny_store_yields_nothing_when_batch_too_big(store):
    assert list(store.batches(1000, seed=0)) == []
    assert store.num_batches(1000) == 0


@pytest.mark.parametrize("world, per_rank", [(2, 8), (3, 5), (4, 3)])
def test_ranks_see_exactly_the_latents_of_one_process_with_the_global_batch(
    tmp_path, world, per_rank
):
    """std > 0 and flips: the concatenated rank batches equal the 1-process global batch bit for bit
    (noise and flips follow the sample's place in the epoch order, not the rank or batch size)."""
    url = str(tmp_path / "f.zarr")
    write_synthetic_store(
        url, count=97, latent_shape=SHAPE, flips=True, chunk_size=CHUNK, shard_size=16
    )
    s = LatentStore.open(url)
    one = list(s.batches(per_rank * world, seed=3, epoch=1, rank=0, world_size=1, drop_last=False))
    ranks = [
        list(s.batches(per_rank, seed=3, epoch=1, rank=r, world_size=world, drop_last=False))
        for r in range(world)
    ]
    assert len(one) == len(ranks[0])
    for j, (z, y) in enumerate(one):
        z_r = torch.cat([ranks[r][j][0] for r in range(world)])
        y_r = torch.cat([ranks[r][j][1] for r in range(world)])
        if j < len(one) - 1:  # the padded last batch is split per rank; compare the full ones
            assert torch.equal(z_r, z) and torch.equal(y_r, y)
    assert float(one[0][0].std()) > 0.5  # the draws really are noisy (std > 0 moments)


def _reference_batch(mean16, flip16, positions, span, seed, epoch, stream=()):
    """The documented stream, written out plainly: order index i -> group i // 16, whose generator
    (seeded with group_seed) draws 16 flips (rand < 1/2) then 16 x shape normals; z = eps*std + mean
    in float32 from the float16-stored moments."""
    out = []
    for p, i in zip(positions.tolist(), span.tolist(), strict=True):
        g = torch.Generator().manual_seed(group_seed(seed, epoch, i // NOISE_GROUP, stream))
        flip = bool((torch.rand(NOISE_GROUP, generator=g) < 0.5)[i % NOISE_GROUP])
        eps = torch.randn((NOISE_GROUP, *SHAPE), generator=g)[i % NOISE_GROUP]
        m = torch.from_numpy((flip16 if flip else mean16)[p])
        out.append(eps * m[1] + m[0])
    return torch.stack(out)


def _reference_rank_order(ok, chunk, seed, epoch, rank, world, window, drop_last):
    """The per-rank order of `shuffle.RankOrder`, written out plainly with lists: chunks shuffled
    and dealt round-robin, each rank keeps its first L samples, the surplus (permuted) fills the
    short ranks in rank order, then padding repeats the rank's own first samples; the kept chunks'
    windows of `window` chunks are permuted one by one."""
    by_chunk: dict[int, list[int]] = {}
    for p in ok:
        by_chunk.setdefault(p // chunk, []).append(p)
    chunks = sorted(by_chunk)
    seq = [chunks[i] for i in rng_for(seed, epoch, shf._ORDER_TAG).permutation(len(chunks))]
    n = len(ok)
    length = n // world if drop_last else -(-n // world)
    dealt = [[p for c in seq[q::world] for p in by_chunk[c]] for q in range(world)]
    pool = [p for q in range(world) for p in dealt[q][length:]]
    pool = [pool[i] for i in rng_for(seed, epoch, shf._TAIL_TAG).permutation(len(pool))]
    kept = dealt[rank][:length]
    mine = seq[rank::world]
    order: list[int] = []
    for k, lo in enumerate(range(0, len(mine), window)):
        members = [p for p in kept if p // chunk in mine[lo : lo + window]]
        perm = rng_for(seed, epoch, k, shf._WINDOW_TAG, rank, world).permutation(len(members))
        order += [members[i] for i in perm]
    short = [max(0, length - len(d)) for d in dealt]
    lo = sum(short[:rank])
    tail = pool[lo : lo + short[rank]]
    tail += [order[i % len(order)] for i in range(short[rank] - len(tail))]
    return np.asarray(order + tail)


@pytest.mark.parametrize("windows", [False, True])
def test_batches_follow_the_documented_noise_stream_for_any_thread_count(tmp_path, windows):
    """Bit for bit the reference stream, for 1..5 sampling threads, partial noise groups (batch 24),
    several ranks and a padded last batch (drop_last=False). In RAM: one epoch order split over
    the ranks; in windows: each rank's own order (a hand-built reference) and noise stream."""
    url = str(tmp_path / "t.zarr")
    arrays = write_synthetic_store(
        url,
        count=203,
        latent_shape=SHAPE,
        flips=True,
        chunk_size=CHUNK,
        shard_size=16,
        skipped=SKIPPED,
        num_classes=203,
    )
    mean16 = arrays["moments"].astype(np.float16).astype(np.float32)
    flip16 = arrays["moments_flip"].astype(np.float16).astype(np.float32)
    seed, epoch, bs, world = 7, 2, 24, 2
    budget = 9 * LatentStore.open(url).bytes_per_chunk if windows else 2 << 30
    plan = LatentStore.open(url, memory_budget=budget).epoch_order(seed, epoch)  # the RAM mode's
    n = len(OK)
    for threads in (1, 2, 3, 5):
        store = LatentStore.open(url, memory_budget=budget, threads=threads)
        for rank in range(world):
            batches = list(
                store.batches(
                    bs, seed=seed, epoch=epoch, rank=rank, world_size=world, drop_last=False
                )
            )
            assert len(batches) == num_batches(n, bs, world, drop_last=False)
            if windows:
                order = _reference_rank_order(OK, CHUNK, seed, epoch, rank, world, 3, False)
                assert len(order) == -(-n // world)
            for j, (z, pos) in enumerate(batches):
                if windows:
                    span = np.arange(j * bs, min((j + 1) * bs, len(order)))
                    positions, stream = order[span], (rank, world)
                else:
                    span = batch_span(n, j, bs, rank, world, drop_last=False)
                    positions, stream = plan.order[span], ()
                assert pos.tolist() == positions.tolist()
                ref = _reference_batch(mean16, flip16, positions, span, seed, epoch, stream)
                assert torch.equal(z, ref), (threads, rank, j)
