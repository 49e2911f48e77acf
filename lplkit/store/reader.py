"""`LatentStore`: random access to a latent store and the fast, resumable shuffled training loader.

zarr costs ~0.3-0.6 ms per chunk, so per-sample fancy indexing caps near 3k samples/s. Everything here
reads whole inner chunks (merged into contiguous runs) and gathers in memory:

- `read(indices)` groups the requested positions by chunk, reads each run of chunks once, gathers.
- `batches(...)` draws each batch from RAM. When the whole store fits `memory_budget` it is loaded
  once and kept, and the order is a uniform permutation of all samples (`shuffle.epoch_order`), split
  over DDP ranks batch by batch. Otherwise each rank reads its own windows of chunks
  (`shuffle.RankOrder`: chunk order shuffled and dealt to the ranks, samples permuted within a
  window), so an epoch reads the store once over all ranks; the next window is read in a background
  thread while the current one is consumed.

Latents are sampled as `z = mean + std * eps`, `eps ~ N(0, I)`: the epoch order is cut into groups
of 16 samples, each with its own torch generator seeded from `(seed, epoch, group)` that draws the
group's flips (with flips, each sample uses the moments of the flipped image with probability 1/2)
and then its eps (`shuffle.BatchDraws`). So batch `j` is a pure function of `(seed, epoch, j, rank,
world_size, batch_size, memory_budget)`; within the budget a sample's latent does not depend on the
rank split (above it each rank draws its own stream). Resuming at `start_batch=j` gives bitwise the
batches an uninterrupted iteration would have given.
The draws and arithmetic of a batch run on `threads` threads (torch releases the GIL); the numbers
are the same for any thread count.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import zarr
from zarr.core.buffer.cpu import NDBuffer

from lplkit.errors import StoreCorruptError, StoreError
from lplkit.store import format as fmt
from lplkit.store import index as idx
from lplkit.store import shuffle as shf
from lplkit.store.bucket_loader import bucket_batches, num_bucket_batches
from lplkit.store.buckets import Bucket, bucket_url, buckets_of
from lplkit.store.dataset import LatentDataset
from lplkit.store.markers import index_part_shards, scan_markers
from lplkit.store.shard_rows import ShardRows
from lplkit.store.sidecar import url_to_fs
from lplkit.store.text import TextRows, text_entries
from lplkit.store.tooling import array_of

DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes of stored moments (all arrays) the loader may hold
DEFAULT_MAX_THREADS = 4  # sampling threads when `threads` is not given
DIRECT_READ_MAX = 32  # `read` of at most this many positions reads rows, not chunks (raw stores)

_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool for batch sampling (per pid: a forked child gets its own)."""
    key = (os.getpid(), threads)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lplkit-sample")
    return _POOLS[key]


class _Block:
    """Stored rows held in RAM (as torch tensors sharing the numpy memory) + position -> row.

    Either whole chunks (every chunk takes `chunk_size` rows: the store's partial last chunk is
    padded, never read, so blocks concatenate without renumbering) or, with `positions`, just the
    rows of those sorted positions (a batch read row by row).
    """

    def __init__(
        self,
        arrays: dict[str, torch.Tensor],
        chunks: np.ndarray,
        chunk_size: int,
        n_chunks: int,
        positions: np.ndarray | None = None,
    ):
        self.arrays = arrays
        self.chunk_size = chunk_size
        self.positions = positions
        self.slot = np.full(0 if positions is not None else n_chunks, -1, dtype=np.int64)
        if positions is None:
            self.slot[chunks] = np.arange(len(chunks)) * chunk_size
        self.raw: dict[str, np.ndarray] = {}  # the full numpy buffers, for reuse

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(held: bool per position, row of each held one; undefined where not held)."""
        if self.positions is not None:
            row = np.minimum(np.searchsorted(self.positions, positions), len(self.positions) - 1)
            return self.positions[row] == positions, row
        chunk = positions // self.chunk_size
        slots = self.slot[chunk]
        return slots >= 0, slots + positions - chunk * self.chunk_size

    def rows(self, positions: np.ndarray) -> np.ndarray:
        held, rows = self.locate(positions)
        if not held.all():
            raise KeyError("positions outside this block")
        return rows


def _as_tensor(x: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored numpy rows as a torch tensor of the stored dtype (bfloat16 bits viewed as bfloat16)."""
    if dtype == "bfloat16":
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def _text_captions(table: pa.Table) -> pa.Table:
    """`table` with "" in `caption` where index.parquet holds null (the source had no caption).

    One value for "no caption" across the store API (`rows`, `index`, `index_column`,
    `LatentDataset`): the string a text encoder takes as the empty prompt, and one torch's
    `default_collate` can batch (it refuses None).
    """
    i = table.schema.get_field_index("caption")
    return table.set_column(i, "caption", pc.fill_null(table.column(i), ""))


class LatentStore:
    """A finalized latent store opened for reading (`LatentStore.open(url)`)."""

    def __init__(
        self,
        url: str,
        group: zarr.Group,
        manifest: dict[str, Any],
        index: idx.IndexFile,
        memory_budget: int,
        threads: int | None = None,
        labels_ok: tuple[np.ndarray, np.ndarray | None] | None = None,
    ) -> None:
        self.url = url
        self.group = group
        self.manifest = manifest
        self._index = index
        self.memory_budget = int(memory_budget)
        # Threads that sample each batch (eps draws + arithmetic); None = torch's intra-op count
        # (1 under torchrun with several processes per node, which sets OMP_NUM_THREADS=1), at
        # most DEFAULT_MAX_THREADS: each thread's larger ops may still fan out on torch's OpenMP
        # pool, so many threads would oversubscribe the cores.
        if threads is None:
            threads = min(DEFAULT_MAX_THREADS, torch.get_num_threads())
        self.threads = max(1, int(threads))
        self.chunk_size = int(manifest["chunk_size"])
        self.dtype = manifest["dtype"]
        self.has_flips = bool(manifest["flips"])
        self._count = int(manifest["source"]["count"])
        # A bucketed store's root holds no arrays: its data is read through `bucket_view(b)`
        self._buckets = buckets_of(manifest)
        self._views: dict[int, LatentStore] = {}
        self._arrays = (
            {}
            if self._buckets is not None
            else {n: array_of(group, n) for n in fmt.array_names(manifest) if n != fmt.LABELS}
        )
        # Single rows straight from the shard files when stored raw on a local disk (else None)
        fs, root = url_to_fs(url)
        direct = {
            n: ShardRows.for_array(fs, root, n, a.metadata.to_dict())
            for n, a in self._arrays.items()
        }
        self._direct: dict[str, ShardRows] | None = (
            {n: r for n, r in direct.items() if r is not None}
            if direct and all(r is not None for r in direct.values())
            else None
        )
        # Labels come from the index's label column (equal to the labels array: the writer checks
        # it, verify re-checks it): one column read instead of one zarr chunk read per 64 rows.
        self.labels, ok = labels_ok or index.labels_and_ok()
        self._ok_positions = ok  # None: every position is ok (materialized on first use)
        self.n_ok = self._count if ok is None else len(ok)
        self._ram: _Block | None = None
        self._ram_future: Future[_Block] | None = None
        self._ram_future_pid = 0
        self._scratch: dict[str, torch.Tensor] = {}
        self._columns: dict[str, pa.Array] = {}
        self._chunk_table: shf.ChunkTable | None = None
        self._text: dict[str, TextRows] = {}

    # -- aspect-ratio buckets (lplkit.store.buckets) ---------------------------------------------

    @property
    def bucketed(self) -> bool:
        """Whether the store was encoded with `--buckets` (its data is per bucket)."""
        return self._buckets is not None

    @property
    def buckets(self) -> list[Bucket]:
        """The store's buckets (id, size (W, H) pixels, latent_shape (C, h, w), rows, start): bucket
        b holds the positions `[start, start + rows)`. A square store is one bucket of everything."""
        if self._buckets is not None:
            return list(self._buckets)
        res = int(self.manifest["resolution"])
        return [Bucket(0, (res, res), self.latent_shape, self._count, 0)]

    def bucket_of(self, positions: Any) -> np.ndarray:
        """The bucket id of each (global) position, int64."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(pos) and (pos.min() < 0 or pos.max() >= self._count):
            raise IndexError(f"positions must be in [0, {self._count})")
        starts = np.asarray([b.start for b in self.buckets], dtype=np.int64)
        return np.searchsorted(starts, pos, side="right") - 1

    def bucket_view(self, bucket: int) -> LatentStore:
        """Bucket `bucket` as a store of its own: positions 0..rows-1 (global position = its
        `start` + position), one latent shape; `read`, `batches`, `as_dataset`, `read_text`,
        `labels`, `ok_positions`, `latent_shape` work as on a square store. Views share this
        store's memory budget in proportion to their stored bytes. A square store's bucket 0 is
        the store itself."""
        buckets = self.buckets
        if not 0 <= int(bucket) < len(buckets):
            raise IndexError(f"bucket {bucket} out of range: {self.url} has {len(buckets)}")
        if self._buckets is None:
            return self
        b = int(bucket)
        if b not in self._views:
            nbytes = [x.rows * fmt.row_bytes(x.latent_shape, self.dtype, self.has_flips)
                      for x in buckets]  # fmt: skip
            share = nbytes[b] / max(1, sum(nbytes))
            self._views[b] = LatentStore.open(
                bucket_url(self.url, b),
                memory_budget=max(1, int(self.memory_budget * share)),
                threads=self.threads,
            )
        return self._views[b]

    def _one_shape(self, what: str) -> None:
        """`StoreError` (one line) for an API that needs one latent shape, on a bucketed store."""
        if self._buckets is not None:
            sizes = ", ".join(f"{b.size[0]}x{b.size[1]}" for b in self._buckets)
            raise StoreError(
                f"{self.url} is bucketed ({len(self._buckets)} bucket(s): {sizes}): {what} is per "
                "bucket; use store.buckets and store.bucket_view(b)"
            )

    @property
    def reads_rows(self) -> bool:
        """Whether single rows are read from the shard files (raw, local store): then random
        access needs no copy of the store in RAM (the page cache is shared by every process)."""
        return self._direct is not None

    @property
    def ok_positions(self) -> np.ndarray:
        """Sorted positions of the ok samples (int64; built on first use for an all-ok store)."""
        if self._ok_positions is None:
            self._ok_positions = np.arange(self._count, dtype=np.int64)
        return self._ok_positions

    @property
    def index(self) -> pa.Table:
        """The whole `index.parquet` as a pyarrow table (read on first use, then kept; `rows`
        reads only the row groups it needs). `caption` is "" where the source had none."""
        return _text_captions(self._index.table())

    def index_column(self, name: str) -> pa.Array:
        """One index column (e.g. "key", "caption") aligned to positions: entry `p` is position
        `p`'s (read on first use, then kept; `caption` is "" where the source had none)."""
        if name not in self._columns:
            column = self._index.column(name)
            self._columns[name] = pc.fill_null(column, "") if name == "caption" else column
        return self._columns[name]

    @classmethod
    def open(
        cls,
        url: str,
        *,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        allow_incomplete: bool = False,
        threads: int | None = None,
    ) -> LatentStore:
        """Open a store. An unfinished store (encode still running or crashed) is refused unless
        `allow_incomplete`, in which case only shards with a completion marker count as data.
        `threads` sample each training batch (default: `torch.get_num_threads()`, at most 4); the
        batches are bitwise the same for any value."""
        url = str(url)
        group, manifest = fmt.open_manifest(url)
        problems = fmt.manifest_problems(manifest)
        if problems:
            raise StoreCorruptError(
                f"{url}: invalid manifest ({'; '.join(problems)}); run `lplkit verify {url}`"
            )
        fs, root = url_to_fs(url)
        count = int(manifest["source"]["count"])
        if not (manifest["completed"] or allow_incomplete):
            raise StoreError(
                f"{url} is not finished (encode still running or interrupted); re-run the encode "
                "command to complete it"
            )
        if manifest.get("buckets") is not None and not manifest["completed"]:
            raise StoreError(
                f"{url} is a bucketed store that is not finished; re-run the encode command to "
                "complete it"
            )
        try:
            if manifest["completed"]:
                index = idx.IndexFile(count, fs=fs, path=f"{root}/{fmt.INDEX_FILE}")
            else:
                index = idx.IndexFile(
                    count, table=cls._index_of_complete_shards(fs, root, manifest)
                )
            labels_ok = index.labels_and_ok()
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise StoreCorruptError(
                f"{url}/{fmt.INDEX_FILE} is unreadable ({exc}); run `lplkit verify {url} --repair` "
                "then re-run the encode command to rebuild it"
            ) from None
        return cls(url, group, manifest, index, memory_budget, threads, labels_ok)

    @staticmethod
    def _index_of_complete_shards(fs: Any, root: str, manifest: dict[str, Any]) -> pa.Table:
        """The index rows of the shards with a sound marker: from each one's index part, or from
        the index.parquet an earlier finalize wrote (which removed the parts it merged)."""
        count, size = manifest["source"]["count"], manifest["shard_size"]
        scan = scan_markers(fs, root, count, size)
        parts = index_part_shards(fs, root, scan.n_shards)
        previous: idx.IndexFile | None = None
        tables = []
        for s in sorted(scan.markers):
            if s in parts:
                tables.append(idx.read_table(fs, fmt.index_part_path(root, s)))
                continue
            if previous is None:
                previous = idx.IndexFile(count, fs=fs, path=f"{root}/{fmt.INDEX_FILE}")
                if not previous.aligned:
                    raise ValueError(f"shard {s} has no index part and no aligned index")
            tables.append(previous.rows(*fmt.shard_range(s, count, size)))
        return pa.concat_tables(tables) if tables else idx.INDEX_SCHEMA.empty_table()

    def __len__(self) -> int:
        return self._count

    @property
    def classes(self) -> list[str] | None:
        """Class names (label k is `classes[k]`) recorded by the encode, or None (no named classes,
        or a store written before the manifest had them)."""
        classes = self.manifest.get("classes")
        return list(classes) if isinstance(classes, list) else None

    @property
    def text_encoders(self) -> dict[str, dict[str, Any]]:
        """The cached text encoders: name -> manifest entry (model id, revision, class, layer,
        max_tokens L, hidden_size D, pooled_size P, dtype, counts); completed ones only. A
        bucketed store: those completed in every bucket (bucket 0's entries; each bucket caches
        its own rows, read with `bucket_view(b).read_text`)."""
        if self._buckets is None:
            return text_entries(self.manifest, completed_only=True)
        per_bucket = [
            text_entries(fmt.read_manifest(bucket_url(self.url, b.id)) or {}, completed_only=True)
            for b in self._buckets
        ]
        return {n: e for n, e in per_bucket[0].items() if all(n in p for p in per_bucket)}

    def text_names(self, text: bool | str | list[str] | tuple[str, ...] | None) -> list[str]:
        """`text` of `batches`/`as_dataset` as encoder names: True = every cached encoder."""
        if not text:
            return []
        have = self.text_encoders
        if text is True:
            names = sorted(have)
        else:
            names = [text] if isinstance(text, str) else [str(n) for n in text]  # type: ignore[union-attr]
        if text is True and not names:
            raise StoreError(
                f"{self.url} caches no text encoder; add one with `lplkit encode-text`"
            )
        missing = [n for n in names if n not in have]
        if missing:
            raise StoreError(
                f"{self.url} has no completed text encoder {', '.join(map(repr, missing))}; "
                f"cached: {', '.join(sorted(have)) or 'none'}"
            )
        return names

    def _text_rows(self, name: str) -> TextRows:
        if name not in self._text:
            self._text[name] = TextRows(self.url, self.group, name, self.text_encoders[name])
        return self._text[name]

    def read_text(
        self, positions: Any, text: bool | str | list[str] | tuple[str, ...] = True
    ) -> dict[str, dict[str, torch.Tensor]]:
        """name -> {"states" (n, L, D), "mask" (n, L) bool[, "pooled" (n, P)]} of `positions`:
        the stored values (float16 / bfloat16 / float32 tensors), rows in the order asked."""
        self._one_shape("read_text()")
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(pos) and (pos.min() < 0 or pos.max() >= self._count):
            raise IndexError(f"positions must be in [0, {self._count})")
        return {
            n: self._text_tensors(n, self._text_rows(n).read(pos)) for n in self.text_names(text)
        }

    def empty_text(self, name: str) -> dict[str, torch.Tensor]:
        """The empty caption's outputs of encoder `name` (rows of 1), for classifier-free guidance."""
        self._one_shape("empty_text()")
        self.text_names(name)
        return self._text_tensors(name, self._text_rows(name).empty())

    def _text_tensors(self, name: str, rows: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        dtype = self.text_encoders[name]["dtype"]
        return {
            a: torch.from_numpy(v).bool() if a == "mask" else _as_tensor(v, dtype)
            for a, v in rows.items()
        }

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of every latent; a bucketed store raises (`bucket_view(b).latent_shape`)."""
        self._one_shape("latent_shape")
        c, h, w = self.manifest["latent_shape"]
        return int(c), int(h), int(w)

    @property
    def n_chunks(self) -> int:
        return -(-self._count // self.chunk_size)

    @property
    def bytes_per_chunk(self) -> int:
        """Stored bytes of one chunk across the moment arrays the loader reads."""
        c, h, w = self.latent_shape
        item = fmt.storage_dtype(self.dtype).itemsize
        return self.chunk_size * 2 * c * h * w * item * len(self._arrays)

    # -- chunk I/O ------------------------------------------------------------------------------

    def _load_batch(self, positions: np.ndarray) -> _Block:
        """The rows of one batch, served while a background read of the store or window runs:
        one pread per row from raw local shard files (a chunk is 64 rows: reading the batch's
        chunks would copy 64x what it serves), else its chunks."""
        if self._direct is None:
            return self._load(np.unique(positions // self.chunk_size))
        pos = np.unique(positions)
        arrays = {}
        for name, rows in self._direct.items():
            out = np.empty((len(pos), *rows.row_shape), dtype=rows.dtype)
            rows.read(pos, out)
            arrays[name] = _as_tensor(out, self.dtype)
        return _Block(arrays, pos, self.chunk_size, self.n_chunks, positions=pos)

    def _load(self, chunks: np.ndarray, buffers: dict[str, np.ndarray] | None = None) -> _Block:
        """Read `chunks` (sorted ids) of every moment array, one zarr read per run of consecutive
        ids, straight into the block's buffer (no intermediate copy). `buffers` (from a dropped
        block) are reused when big enough: touching fresh memory costs as much as the read."""
        chunks = np.asarray(chunks, dtype=np.int64)
        breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
        runs = np.split(chunks, breaks) if len(chunks) else []
        arrays, raw = {}, {}
        for name, arr in self._arrays.items():
            rows = len(chunks) * self.chunk_size
            out = None if buffers is None else buffers.get(name)
            if out is None or len(out) < rows:
                out = np.empty((rows, *arr.shape[1:]), dtype=arr.dtype)
            raw[name] = out
            out = out[:rows]
            if self._direct is not None:  # raw local shard files: one pread per chunk
                self._direct[name].read_chunks(chunks, out)
                arrays[name] = _as_tensor(out, self.dtype)
                continue
            row = 0
            for run in runs:
                lo = int(run[0]) * self.chunk_size
                hi = min(int(run[-1] + 1) * self.chunk_size, self._count)
                arr.get_basic_selection(
                    slice(lo, hi), out=NDBuffer.from_numpy_array(out[row : row + hi - lo])
                )
                row += len(run) * self.chunk_size
            arrays[name] = _as_tensor(out, self.dtype)
        block = _Block(arrays, chunks, self.chunk_size, self.n_chunks)
        block.raw = raw
        return block

    def _ram_loading(self) -> Future[_Block]:
        """The whole store being read into RAM in a background thread (started on first call)."""
        if self._ram_future is None or self._ram_future_pid != os.getpid():
            future: Future[_Block] = Future()
            if self._ram is not None:
                future.set_result(self._ram)
            elif self._direct is None:
                # zarr reads: in this thread (a zarr read still running at exit fails noisily)
                future.set_result(self._load(np.arange(self.n_chunks)))
            else:  # raw shard files: a daemon thread (plain preads; nothing to wait for at exit)

                def load() -> None:
                    try:
                        future.set_result(self._load(np.arange(self.n_chunks)))
                    except BaseException as exc:
                        future.set_exception(exc)

                threading.Thread(target=load, name="lplkit-store-ram", daemon=True).start()
            self._ram_future = future
            self._ram_future_pid = os.getpid()
        return self._ram_future

    def _ram_block(self) -> _Block | None:
        """The whole store in RAM if it fits the memory budget (loaded once, then kept)."""
        if self._ram is None and self.n_chunks * self.bytes_per_chunk <= self.memory_budget:
            self._ram = self._ram_loading().result()
        return self._ram

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ram_future"], state["_ram_future_pid"] = None, 0  # a thread's: not picklable
        return state

    # -- random access --------------------------------------------------------------------------

    def read(self, indices: Any, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std), each float32 `(n, C, h, w)`, of the positions `indices` (any order).

        Reads are grouped by chunk: each needed chunk is read once, whatever the request order.
        """
        self._one_shape("read()")
        name = fmt.MOMENTS_FLIP if flip else fmt.MOMENTS
        if name not in self._arrays:
            raise StoreError(f"{self.url} has no flipped moments (encoded without --flip)")
        pos = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(pos) and (pos.min() < 0 or pos.max() >= self._count):
            raise IndexError(f"positions must be in [0, {self._count})")
        if self._ram is None and self._direct is not None and len(pos) <= DIRECT_READ_MAX:
            direct = self._direct[name]  # a few rows: one pread each instead of a chunk each
            stored = np.empty((len(pos), *direct.row_shape), dtype=direct.dtype)
            direct.read(pos, stored)
            m = fmt.from_storage(stored, self.dtype)
            return m[:, 0], m[:, 1]
        block = self._ram or self._load(np.unique(pos // self.chunk_size))
        rows = torch.from_numpy(block.rows(pos))
        m = torch.index_select(block.arrays[name], 0, rows).float().numpy()  # 1.7x adv. indexing
        return m[:, 0], m[:, 1]

    def read_row(self, position: int, flip: bool = False) -> torch.Tensor:
        """The stored moments of one position as float32 `(2, C, h, w)` (mean, std): one pread on
        a raw local store (nothing held per process: the page cache is shared), else from the
        store held in RAM or the position's chunk."""
        self._one_shape("read_row()")
        name = fmt.MOMENTS_FLIP if flip else fmt.MOMENTS
        if name not in self._arrays:
            raise StoreError(f"{self.url} has no flipped moments (encoded without --flip)")
        position = int(position)
        if not 0 <= position < self._count:
            raise IndexError(f"positions must be in [0, {self._count})")
        if self._ram is None and self._direct is not None:
            stored = self._direct[name].row(position)
            if stored is None:
                return torch.zeros((2, *self.latent_shape))
            return _as_tensor(stored, self.dtype).float()
        block = self._ram or self._load(np.asarray([position // self.chunk_size]))
        return block.arrays[name][int(block.rows(np.asarray([position]))[0])].float()

    # -- training loader ------------------------------------------------------------------------

    def _split(self, rank: int | None, world_size: int | None) -> tuple[int, int]:
        if rank is None or world_size is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                rank = torch.distributed.get_rank() if rank is None else rank
                world_size = (
                    torch.distributed.get_world_size() if world_size is None else world_size
                )
            else:
                rank, world_size = rank or 0, world_size or 1
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        return rank, world_size

    def num_batches(
        self,
        batch_size: int,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = True,
    ) -> int:
        """Batches per epoch for one rank (equal on every rank)."""
        if self.bucketed:
            return num_bucket_batches(self, batch_size, rank, world_size, drop_last)
        _, world_size = self._split(rank, world_size)
        return shf.num_batches(self.n_ok, batch_size, world_size, drop_last)

    def window_chunks(self) -> int | None:
        """Chunks per shuffle window: None (one window: the whole store) when it fits the budget."""
        self._one_shape("the shuffle window")
        if self.n_chunks * self.bytes_per_chunk <= self.memory_budget:
            return None
        # Up to three windows live at once: a batch straddling two, and the next one being read.
        return max(1, self.memory_budget // (3 * self.bytes_per_chunk))

    def epoch_order(self, seed: int, epoch: int = 0, shuffle: bool = True) -> shf.EpochOrder:
        """The order `batches` visits the ok samples in (see `lplkit.store.shuffle`)."""
        return shf.epoch_order(
            self.ok_positions,
            self.chunk_size,
            seed=seed,
            epoch=epoch,
            shuffle=shuffle,
            window=self.window_chunks(),
        )

    def rank_order(
        self,
        seed: int,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
        shuffle: bool = True,
    ) -> shf.RankOrder:
        """The order `batches` serves rank `rank` in when the store exceeds the budget (ranks
        partition the windows; see `lplkit.store.shuffle.RankOrder`)."""
        self._one_shape("rank_order()")
        if self._chunk_table is None:  # the same every epoch: built once
            self._chunk_table = shf.ChunkTable(self._ok_positions, self._count, self.chunk_size)
        return shf.RankOrder(
            self._chunk_table,
            seed=seed,
            epoch=epoch,
            rank=rank,
            world_size=world_size,
            window=self.window_chunks() or self.n_chunks,
            drop_last=drop_last,
            shuffle=shuffle,
        )

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        epoch: int = 0,
        start_batch: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = True,
        with_index: bool = False,
        text: bool | str | list[str] | tuple[str, ...] = False,
    ) -> Iterator[tuple[Any, ...]]:
        """Yield `(latents (B, C, h, w) float32, labels (B,) int64)` for one epoch of one rank.

        `latents = mean + std * eps` (raw, unscaled; normalise downstream). Every ok sample is used
        once per epoch across ranks (`drop_last` drops the last partial global batch). rank and
        world_size default to torch.distributed's when it is initialised. `with_index=True` adds
        the batch's store positions `(B,)` int64 as a third element: `rows(positions)` gives their
        `index.parquet` rows (keys, captions). `text` (True: every cached encoder, or names) adds,
        last, the batch's cached text conditioning `read_text(positions, text)`: name ->
        {states, mask, pooled}, read one batch ahead in a background thread.
        """
        if self.bucketed:  # every batch from one bucket (lplkit.store.bucket_loader)
            yield from bucket_batches(self, batch_size, seed=seed, shuffle=shuffle, epoch=epoch,
                                      start_batch=start_batch, rank=rank, world_size=world_size,
                                      drop_last=drop_last, with_index=with_index,
                                      text=text)  # fmt: skip
            return
        names = self.text_names(text)
        batches = self._batches(batch_size, seed, shuffle, epoch, start_batch, rank, world_size,
                                drop_last)  # fmt: skip
        if not names:
            for batch, positions in batches:
                yield (*batch, torch.from_numpy(positions)) if with_index else batch
            return
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lplkit-text")
        try:  # text rows of batch j are read while batch j+1's latents are sampled
            ahead: tuple[Any, np.ndarray, Future[Any]] | None = None
            for batch, positions in batches:
                job = pool.submit(self.read_text, positions, names)
                if ahead is not None:
                    yield self._with_text(*ahead, with_index)
                ahead = (batch, positions, job)
            if ahead is not None:
                yield self._with_text(*ahead, with_index)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _with_text(
        batch: tuple[torch.Tensor, ...], positions: np.ndarray, job: Future[Any], with_index: bool
    ) -> tuple[Any, ...]:
        extra = (torch.from_numpy(positions),) if with_index else ()
        return (*batch, *extra, job.result())

    def _batches(
        self,
        batch_size: int,
        seed: int,
        shuffle: bool,
        epoch: int,
        start_batch: int,
        rank: int | None,
        world_size: int | None,
        drop_last: bool,
    ) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], np.ndarray]]:
        """(latents, labels) and the positions of each batch of one epoch of one rank."""
        rank, world_size = self._split(rank, world_size)
        total = shf.num_batches(self.n_ok, batch_size, world_size, drop_last)
        if total == 0 or start_batch >= total:
            return
        if self.window_chunks() is None:  # the store fits the budget: read once, then kept
            plan = self.epoch_order(seed, epoch, shuffle)
            n = len(plan.order)
            loading = self._ram_loading()
            for j in range(start_batch, total):
                span = shf.batch_span(n, j, batch_size, rank, world_size, drop_last)
                positions = plan.order[span]
                if self._ram is None and loading.done():
                    self._ram = loading.result()
                # Until the whole store is in, each batch reads its own chunks (pipelined start)
                block = self._ram or self._load_batch(positions)
                yield self._make_batch([block], positions, span, seed, epoch), positions
            return
        own = self.rank_order(seed, epoch, rank, world_size, drop_last, shuffle)
        yield from self._stream(own, batch_size, seed, epoch, start_batch, total)

    def rows(self, positions: Any) -> pa.Table:
        """The `index.parquet` rows (key, label, caption, ...) of store `positions`, in that order
        (only the row groups holding them are read). `caption` is "" where the source had none."""
        try:
            rows = self._index.take(np.asarray(positions, dtype=np.int64).reshape(-1))
        except IndexError:
            raise IndexError(f"positions without an index row in {self.url}") from None
        return _text_captions(rows)

    def as_dataset(
        self,
        *,
        seed: int = 0,
        flip: bool = True,
        text: bool | str | list[str] = False,
        keys: bool = True,
    ) -> Any:
        """A map-style `torch.utils.data.Dataset` over the ok samples (`LatentDataset`)."""
        return LatentDataset(self, seed=seed, flip=flip, text=text, keys=keys)

    def _stream(
        self,
        plan: shf.RankOrder,
        batch_size: int,
        seed: int,
        epoch: int,
        start_batch: int,
        total: int,
    ) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], np.ndarray]]:
        """(batch, its positions) from this rank's windows, read one ahead in a background
        thread."""
        loaded: dict[int, _Block] = {}
        pending: dict[int, Future[_Block]] = {}
        free: list[dict[str, np.ndarray]] = []  # buffers of dropped windows
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lplkit-store")
        try:

            def request(k: int) -> None:
                if k < plan.n_windows and k not in loaded and k not in pending:
                    buffers = free.pop() if free else None
                    pending[k] = pool.submit(self._load, plan.window_chunks(k), buffers)

            def get(k: int) -> _Block:
                if k not in loaded:
                    request(k)
                    loaded[k] = pending.pop(k).result()
                return loaded[k]

            for j in range(start_batch, total):
                span = plan.batch_span(j, batch_size)
                positions = plan.positions(span)
                windows = plan.windows_of(span)
                for k in list(loaded):
                    if k not in windows:
                        free.append(loaded.pop(k).raw)
                for k in windows:
                    request(k)
                request(windows[-1] + 1)
                ready = all(k in loaded or pending[k].done() for k in windows)
                if ready or self._direct is None:  # zarr reads would queue behind the window's
                    blocks = [get(k) for k in windows]
                else:  # a window is still being read: serve this batch from its own chunks
                    blocks = [self._load_batch(positions)]
                batch = self._make_batch(blocks, positions, span, seed, epoch, plan.stream)
                yield batch, positions

        finally:  # an abandoned iteration does not wait for the windows queued ahead
            pool.shutdown(wait=self._direct is None, cancel_futures=True)

    def _make_batch(
        self,
        blocks: list[_Block],
        positions: np.ndarray,
        span: np.ndarray,
        seed: int,
        epoch: int,
        stream: tuple[int, ...] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather, pick flips, decode and sample `z = mean + std * eps` (draws: `shf.BatchDraws`).

        The batch is cut at noise-group boundaries into up to `threads` pieces that each run the
        whole pipeline for their rows (torch releases the GIL). Every group has its own generator,
        so the numbers do not depend on the cut. Only the returned tensors are freshly allocated
        per batch: fresh multi-MB buffers cost more in page faults than the arithmetic itself.
        """
        b = len(positions)
        latents = torch.empty((b, *self.latent_shape))
        m16 = self._buffer("m16", (b, 2, *self.latent_shape), blocks[0].arrays[fmt.MOMENTS].dtype)
        m32 = self._buffer("m32", m16.shape, torch.float32)

        # Seeding and flips are many small Python-level calls: made here, before the threads start,
        # they do not fight over the GIL (2.5x slower when they did).
        cuts = shf.group_cuts(span, self.threads)
        draws = [shf.BatchDraws(span[lo:hi], seed, epoch, stream) for lo, hi in pairwise(cuts)]

        def sample(lo: int, hi: int, d: shf.BatchDraws) -> None:
            self._gather(blocks, positions[lo:hi], d.flips if self.has_flips else None, m16[lo:hi])
            d.fill_eps(latents[lo:hi])
            m32[lo:hi].copy_(m16[lo:hi])  # z = mean + std * eps (two exact ops, no FMA)
            latents[lo:hi].mul_(m32[lo:hi, 1]).add_(m32[lo:hi, 0])

        if len(draws) > 1:
            pool = _pool(self.threads)
            jobs = [
                pool.submit(sample, lo, hi, d)
                for (lo, hi), d in zip(pairwise(cuts), draws, strict=True)
            ]
            for job in jobs:
                job.result()
        else:
            sample(0, b, draws[0])
        labels = torch.from_numpy(self.labels[positions].astype(np.int64))
        return latents, labels

    def _gather(
        self,
        blocks: list[_Block],
        positions: np.ndarray,
        flips: torch.Tensor | None,
        out: torch.Tensor,
    ) -> None:
        """Stored moments of `positions` into `out` (flipped copy where `flips`)."""
        b = len(positions)
        for block in blocks:  # a batch may straddle two windows: gather from each, no merging
            held, at = block.locate(positions)
            mine = held if len(blocks) > 1 else np.ones(b, dtype=bool)
            rows = torch.from_numpy(at[mine])
            if mine.all():
                torch.index_select(block.arrays[fmt.MOMENTS], 0, rows, out=out)
            else:
                out[torch.from_numpy(mine)] = block.arrays[fmt.MOMENTS][rows]
            if flips is not None:
                pick = flips[torch.from_numpy(mine)]
                dest = torch.from_numpy(np.flatnonzero(mine))[pick]
                out[dest] = block.arrays[fmt.MOMENTS_FLIP][rows[pick]]

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A scratch tensor reused across batches (reallocated when the shape or dtype changes)."""
        buf = self._scratch.get(name)
        if buf is None or buf.shape != torch.Size(shape) or buf.dtype != dtype:
            buf = self._scratch[name] = torch.empty(shape, dtype=dtype)
        return buf
