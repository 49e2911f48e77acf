"""Epoch order and DDP batch split for the training loader (pure numpy; no I/O).

The order of an epoch is a deterministic function of (seed, epoch, the store's ok positions, chunk
size, window size), so any rank can compute any batch without reading data or talking to other ranks,
and resuming at batch `j` needs no state beyond `(seed, epoch, j)`.

Block shuffle, with `W` = chunks per window:

1. the chunks holding ok samples are put in a uniformly random order (`rng(seed, epoch)`);
2. that order is cut into windows of `W` consecutive chunks;
3. the ok samples of window `k` are permuted uniformly (`rng(seed, epoch, k)`);
4. the epoch order is the concatenation of the windows.

When `W` >= the number of chunks there is a single window and the order is a uniform random
permutation of all ok samples. Otherwise every ok sample still appears exactly once per epoch, but
two samples of one chunk are always in the same window (a batch mixes `W * chunk` candidates).

DDP, one order (the store fits the budget: one window): global batch `j` is
`order[j*B*R : (j+1)*B*R]` and rank `r` takes its `r`-th block of `B`, so ranks are disjoint and have
equal batch counts (`drop_last=True` drops the last `< B*R` samples; `drop_last=False` pads the last
global batch from the start of the order, like DistributedSampler).

DDP above the budget: `RankOrder`, per-rank windows. Ranks partition each window's chunks, so an
epoch reads the store once over all ranks instead of once per rank; each rank's order is computed a
window at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_ORDER_TAG = 0x0D
_WINDOW_TAG = 0x3A
_BATCH_TAG = 0xBA
_TAIL_TAG = 0x7A


def rng_for(*key: int) -> np.random.Generator:
    """A numpy Generator seeded from a tuple of non-negative ints via SeedSequence."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


#: Consecutive order indices that share one generator for their noise and flip draws.
NOISE_GROUP = 16


def group_seed(seed: int, epoch: int, group: int, stream: tuple[int, ...] = ()) -> int:
    """The torch seed of one noise group's draws: a hash of (seed, epoch, group) and, for a rank's
    own order (`RankOrder`), its stream `(rank, world_size)`."""
    key = [seed, epoch, group, _BATCH_TAG, *stream]
    state = np.random.SeedSequence(key).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


class BatchDraws:
    """The random draws of one batch (or piece of one): flips at construction, eps on demand.

    The epoch order is cut into groups of NOISE_GROUP consecutive order indices, each drawn from its
    own generator seeded by (seed, epoch, group): first NOISE_GROUP flip draws (`rand < 1/2`), then
    NOISE_GROUP x shape standard normals. A sample's eps and flip therefore depend only on the seed,
    the epoch and its place in the epoch order, never on the batch size, the rank, the world size or
    how the work is split over threads. So with one epoch order a K-rank run sees exactly the
    latents of a 1-process run with the same global batch, and a resumed run those of an
    uninterrupted one. A `RankOrder` (per-rank windows) passes `stream = (rank, world_size)`,
    hashed into the seed: each rank's places get their own draws. Cost: one seeding per 16 samples.

    Flips are drawn first because they decide which moments get gathered; eps is drawn later by
    `fill_eps`, straight into the output rows when a group is whole (no copy). A batch may be cut
    into pieces at group boundaries (`group_cuts`), each with its own `BatchDraws`.
    """

    def __init__(
        self, span: np.ndarray, seed: int, epoch: int, stream: tuple[int, ...] = ()
    ) -> None:
        span = np.asarray(span, dtype=np.int64)
        self.stream = tuple(stream)
        self.size = len(span)
        self.flips = torch.empty(self.size, dtype=torch.bool)
        # (generator after its flip draws, batch rows, offsets inside the group); rows/offsets are
        # slices for a contiguous span (every batch but a wrapped, padded last one), else indices.
        self.groups: list[tuple[torch.Generator, Any, Any]] = []
        if self.size == 0:
            return
        lo = int(span[0])
        if np.all(np.diff(span) == 1):
            for grp in range(lo // NOISE_GROUP, int(span[-1]) // NOISE_GROUP + 1):
                first = max(grp * NOISE_GROUP, lo)
                n = min((grp + 1) * NOISE_GROUP, lo + self.size) - first
                off = first - grp * NOISE_GROUP
                self._draw_flips(
                    seed, epoch, grp, slice(first - lo, first - lo + n), slice(off, off + n)
                )
            return
        groups = span // NOISE_GROUP
        for grp in np.unique(groups):
            sel = np.flatnonzero(groups == grp)
            offs = span[sel] - int(grp) * NOISE_GROUP
            self._draw_flips(seed, epoch, int(grp), torch.from_numpy(sel), torch.from_numpy(offs))

    def _draw_flips(self, seed: int, epoch: int, grp: int, rows: Any, offs: Any) -> None:
        g = torch.Generator().manual_seed(group_seed(seed, epoch, grp, self.stream))
        self.flips[rows] = (torch.rand(NOISE_GROUP, generator=g) < 0.5)[offs]
        self.groups.append((g, rows, offs))

    def fill_eps(self, out: torch.Tensor) -> None:
        """Draw eps into `out` (len(span), *shape) float32. Consumes the generators: call once."""
        shape = tuple(out.shape[1:])
        for g, rows, offs in self.groups:
            if isinstance(rows, slice) and rows.stop - rows.start == NOISE_GROUP:
                out[rows].normal_(generator=g)  # a whole group: draw in place
            else:
                out[rows] = torch.randn((NOISE_GROUP, *shape), generator=g)[offs]


def group_cuts(span: np.ndarray, k: int) -> list[int]:
    """Row boundaries `[0, ..., len(span)]` cutting a batch into at most `k` pieces of about equal
    size, only where a noise group ends (no group is split), so each piece can draw on its own.
    A non-contiguous span (a wrapped, padded last batch) is one piece."""
    n = len(span)
    if k <= 1 or n < 2 or np.any(np.diff(span) != 1):
        return [0, n]
    starts = np.flatnonzero(np.asarray(span[1:]) % NOISE_GROUP == 0) + 1  # rows opening a group
    cuts = {0, n}
    for i in range(1, k):
        if len(starts):
            cuts.add(int(starts[np.argmin(np.abs(starts - i * n / k))]))
    return sorted(cuts)


@dataclass(frozen=True)
class EpochOrder:
    """One epoch's sample order and the windows it is read in.

    `order[window_starts[k]:window_starts[k+1]]` are the samples of window `k`, all inside
    `window_chunks[k]` (sorted chunk ids).
    """

    order: np.ndarray
    window_starts: np.ndarray
    window_chunks: list[np.ndarray]

    def window_of(self, i: int) -> int:
        """The window holding order index `i`."""
        return int(np.searchsorted(self.window_starts, i, side="right") - 1)


def epoch_order(
    ok_positions: np.ndarray,
    chunk_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    window: int | None = None,
) -> EpochOrder:
    """The epoch order of `ok_positions` (sorted) read in windows of `window` chunks (None = all)."""
    ok = np.asarray(ok_positions, dtype=np.int64)
    if len(ok) and ok[-1] - ok[0] == len(ok) - 1:  # contiguous (an all-ok store): no search
        first_chunk, last_chunk = int(ok[0] // chunk_size), int(ok[-1] // chunk_size)
        chunks = np.arange(first_chunk, last_chunk + 1, dtype=np.int64)
        edges = np.clip(chunks * chunk_size - ok[0], 0, len(ok))
        bounds = np.append(edges, len(ok))
        bounds[0] = 0
    else:
        chunk_of = ok // chunk_size
        breaks = np.flatnonzero(np.diff(chunk_of)) + 1  # ok is sorted: chunks change at breaks
        chunks = chunk_of[np.concatenate([[0], breaks])] if len(ok) else chunk_of
        bounds = np.concatenate([[0], breaks, [len(ok)]]) if len(ok) else np.zeros(1, np.int64)
    # ok[bounds[i]:bounds[i+1]] are the samples of chunks[i]
    w = max(1, len(chunks) if window is None else min(int(window), len(chunks)))
    chunk_seq = rng_for(seed, epoch, _ORDER_TAG).permutation(len(chunks)) if shuffle else None
    if chunk_seq is None:
        chunk_seq = np.arange(len(chunks))
    # all samples in chunk_seq order, vectorized: each chunk's run of ok indices, concatenated
    sizes = (bounds[1:] - bounds[:-1])[chunk_seq]
    run_start = np.repeat(bounds[:-1][chunk_seq] - (np.cumsum(sizes) - sizes), sizes)
    seq = ok[run_start + np.arange(int(sizes.sum()), dtype=np.int64)]
    ends = np.concatenate([[0], np.cumsum(sizes)])  # seq offset of each chunk in chunk_seq
    parts, starts, window_chunks = [], [], []
    n = 0
    for k, lo in enumerate(range(0, len(chunks), w)):
        sel = chunk_seq[lo : lo + w]
        samples = seq[ends[lo] : ends[lo + len(sel)]]
        if shuffle:
            samples = samples[rng_for(seed, epoch, k, _WINDOW_TAG).permutation(len(samples))]
        parts.append(samples)
        starts.append(n)
        window_chunks.append(np.sort(chunks[sel]))
        n += len(samples)
    order = np.concatenate(parts) if parts else ok[:0]
    return EpochOrder(order, np.asarray([*starts, n], dtype=np.int64), window_chunks)


def num_batches(n: int, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
    """Batches per rank per epoch for `n` samples."""
    if batch_size < 1 or world_size < 1:
        raise ValueError("batch_size and world_size must be >= 1")
    global_batch = batch_size * world_size
    return n // global_batch if drop_last else -(-n // global_batch)


def batch_span(
    n: int, batch: int, batch_size: int, rank: int, world_size: int, drop_last: bool = True
) -> np.ndarray:
    """Order indices (into `EpochOrder.order`) of rank `rank`'s batch `batch`."""
    global_batch = batch_size * world_size
    lo = batch * global_batch
    if lo + global_batch <= n:
        return np.arange(lo + rank * batch_size, lo + (rank + 1) * batch_size)
    if drop_last or batch >= num_batches(n, batch_size, world_size, drop_last):
        raise IndexError(f"batch {batch} out of range")
    rest = n - lo
    per_rank = -(-rest // world_size)
    # Pad the last global batch from the start of the epoch so every rank gets `per_rank` samples.
    span = np.arange(lo, lo + per_rank * world_size) % n
    return span[rank * per_rank : (rank + 1) * per_rank]


# -- per-rank windows ---------------------------------------------------------------------------


class ChunkTable:
    """The chunks holding ok samples: `chunks[i]` (sorted ids) holds `sizes[i]` ok samples, the
    order indices `bounds[i]:bounds[i+1]` of the sorted ok positions. For an all-ok store
    (`ok` None) positions are order indices: nothing per row is materialized."""

    def __init__(self, ok: np.ndarray | None, count: int, chunk_size: int) -> None:
        self.ok = None if ok is None else np.asarray(ok, dtype=np.int64)
        self.chunk_size = int(chunk_size)
        if self.ok is None:
            self.chunks = np.arange(-(-int(count) // self.chunk_size), dtype=np.int64)
            self.bounds = np.append(np.minimum(self.chunks * self.chunk_size, count), count)
        elif len(self.ok) == 0:
            self.chunks, self.bounds = np.zeros(0, np.int64), np.zeros(1, np.int64)
        else:
            chunk_of = self.ok // self.chunk_size
            breaks = np.flatnonzero(np.diff(chunk_of)) + 1  # ok is sorted: chunks change here
            self.chunks = chunk_of[np.concatenate([[0], breaks])]
            self.bounds = np.concatenate([[0], breaks, [len(self.ok)]]).astype(np.int64)
        self.sizes = np.diff(self.bounds)

    @property
    def n(self) -> int:
        return int(self.bounds[-1])

    def samples(self, sel: np.ndarray) -> np.ndarray:
        """Positions of the ok samples of chunks `sel` (indices into `chunks`), chunk by chunk in
        `sel` order, ascending inside a chunk (vectorized: no Python loop over chunks)."""
        sel = np.asarray(sel, dtype=np.int64)
        sizes = self.sizes[sel]
        run_start = np.repeat(self.bounds[:-1][sel] - (np.cumsum(sizes) - sizes), sizes)
        idx = run_start + np.arange(int(sizes.sum()), dtype=np.int64)
        return idx if self.ok is None else self.ok[idx]


class RankOrder:
    """One rank's order of one epoch when ranks partition the windows (store above the budget).

    With `R` ranks and `W` chunks per window (see the module docstring for `R = 1`, which this
    reproduces bit for bit):

    1. the chunks holding ok samples are put in a uniformly random order (`rng(seed, epoch)`), the
       same on every rank, and dealt round-robin: rank `r` owns chunks `r, r + R, r + 2R, ...` of it;
    2. every rank serves `L` samples: `n // R` with `drop_last`, else `ceil(n / R)`. A rank owning
       more keeps the first `L` in its chunk sequence; the surplus of all ranks (a few chunks' worth:
       dealt chunks differ by at most one per rank on an all-ok store) is permuted
       (`rng(seed, epoch)`) and handed, in rank order, to the ranks owning fewer than `L` ("tail");
       what is still missing with `drop_last=False` (< R samples in all) repeats the rank's own
       first samples, like DistributedSampler's padding;
    3. the rank's kept chunks are cut into windows of `W` consecutive chunks, window `k`'s samples
       permuted uniformly (`rng(seed, epoch, k, rank, R)`), computed when the window is needed;
    4. the rank's order is its windows' concatenation, then the tail.

    So each rank reads only its own chunks plus the tail's few, and an epoch reads the store once
    over all ranks; the union of the ranks' orders is every ok sample exactly once (`drop_last`
    drops `n mod R` of them, `drop_last=False` repeats `R * L - n`). Batch `j` of rank `r` is order
    indices `[j*B, min((j+1)*B, L))` of its own order: a pure function of (seed, epoch, j, rank,
    R, B, the window size), so resuming needs only `(epoch, j)`. Noise and flips follow
    `BatchDraws` on the rank's order indices with stream `(rank, R)`: a sample's draws depend on the
    rank split (unlike the one-order mode, K ranks do not see one process's latents).
    """

    def __init__(
        self,
        table: ChunkTable,
        *,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
        window: int,
        drop_last: bool,
        shuffle: bool = True,
    ) -> None:
        self.table, self.seed, self.epoch, self.shuffle = table, int(seed), int(epoch), shuffle
        self.rank, self.world_size = int(rank), int(world_size)
        self.stream: tuple[int, ...] = () if world_size == 1 else (self.rank, self.world_size)
        n, r_count = table.n, self.world_size
        self.length = n // r_count if drop_last else -(-n // r_count)
        n_chunks = len(table.chunks)
        seq = rng_for(seed, epoch, _ORDER_TAG).permutation(n_chunks) if shuffle else None
        seq = np.arange(n_chunks) if seq is None else seq
        owned = [seq[q::r_count] for q in range(r_count)]  # indices into table.chunks
        counts = np.asarray([int(table.sizes[o].sum()) for o in owned], dtype=np.int64)
        # Surplus of every rank (same on all ranks: each needs the pool to know its share)
        surplus = []
        for q in range(r_count):
            if counts[q] > self.length:  # read only the chunks past the cut: a few
                cum = np.cumsum(table.sizes[owned[q]])
                full = int(np.searchsorted(cum, self.length, side="right"))
                done = int(cum[full - 1]) if full else 0
                surplus.append(table.samples(owned[q][full:])[self.length - done :])
        pool = np.concatenate(surplus) if surplus else np.zeros(0, np.int64)
        if shuffle and len(pool):
            pool = pool[rng_for(seed, epoch, _TAIL_TAG).permutation(len(pool))]
        deficit = np.maximum(self.length - counts, 0)
        lo = int(deficit[: self.rank].sum())
        self._tail = pool[lo : lo + int(deficit[self.rank])]
        self._pad = int(deficit[self.rank]) - len(self._tail)  # filled from the own order's start
        # Own windows: the kept chunks (the last possibly in part), W at a time
        mine = owned[self.rank]
        keep = min(int(counts[self.rank]), self.length)
        cum = np.cumsum(table.sizes[mine])
        n_kept = int(np.searchsorted(cum, keep, side="left")) + 1 if keep else 0
        self._mine = mine[:n_kept]
        w = max(1, int(window))
        self._win_sel = [self._mine[i : i + w] for i in range(0, n_kept, w)]
        win_sizes = [int(table.sizes[s].sum()) for s in self._win_sel]
        own = np.cumsum([0, *win_sizes])
        if len(own) > 1:  # the last kept chunk may be used only in part
            own[-1] = keep
        self._own = keep
        self.window_starts = np.append(own, self.length).astype(np.int64)
        self._cache: dict[int, np.ndarray] = {}

    @property
    def n_windows(self) -> int:
        """Own windows + the tail (always last; it may be empty)."""
        return len(self._win_sel) + 1

    def window_chunks(self, k: int) -> np.ndarray:
        """Sorted chunk ids that window `k` (the tail: `n_windows - 1`) reads."""
        if k < len(self._win_sel):
            return np.sort(self.table.chunks[self._win_sel[k]])
        return np.unique(self.window_samples(k) // self.table.chunk_size)

    def window_samples(self, k: int) -> np.ndarray:
        """Positions of window `k` in serving order (computed on first use; the last 3 kept)."""
        if k in self._cache:
            return self._cache[k]
        if k < len(self._win_sel):
            samples = self.table.samples(self._win_sel[k])
            samples = samples[: self.window_starts[k + 1] - self.window_starts[k]]
            if self.shuffle:
                gen = rng_for(self.seed, self.epoch, k, _WINDOW_TAG, *self.stream)
                samples = samples[gen.permutation(len(samples))]
        else:
            pad = np.zeros(0, np.int64)
            if self._pad:
                source = (
                    self.window_samples(0)
                    if self._own
                    else self.table.samples(np.zeros(1, np.int64))
                )
                pad = source[np.arange(self._pad) % len(source)]
            samples = np.concatenate([self._tail, pad])
        while len(self._cache) >= 3:
            self._cache.pop(next(iter(self._cache)))
        self._cache[k] = samples
        return samples

    def windows_of(self, span: np.ndarray) -> list[int]:
        """The windows holding order indices `span`."""
        found = np.searchsorted(self.window_starts, span, side="right") - 1
        return [min(int(k), self.n_windows - 1) for k in np.unique(found)]

    def positions(self, span: np.ndarray) -> np.ndarray:
        """Store positions at order indices `span`."""
        span = np.asarray(span, dtype=np.int64)
        found = np.minimum(np.searchsorted(self.window_starts, span, side="right") - 1,
                           self.n_windows - 1)  # fmt: skip
        out = np.empty(len(span), dtype=np.int64)
        for k in np.unique(found).tolist():
            sel = found == k
            out[sel] = self.window_samples(k)[span[sel] - self.window_starts[k]]
        return out

    def batch_span(self, batch: int, batch_size: int) -> np.ndarray:
        """Order indices of this rank's batch `batch` (the last one may be short)."""
        lo = batch * batch_size
        if lo >= self.length:
            raise IndexError(f"batch {batch} out of range")
        return np.arange(lo, min(lo + batch_size, self.length), dtype=np.int64)
