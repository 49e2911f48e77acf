"""The store as ``torch.utils.data`` datasets, for users who bring their own loop (accelerate,
Lightning, a plain ``DataLoader``).

- :class:`LatentDataset` (map-style): ``ds[i]`` -> ``{"latent", "label", "key", "caption",
  "position"}`` for the i-th ok sample (``keys=False``: without key and caption). The latent is
  drawn ``z = mean + std * eps`` (with flips: the
  flipped image's moments with probability 1/2) from a generator seeded by ``(seed, epoch,
  position)``, so an item is the same in any worker, any order, any process; ``set_epoch`` gives new
  draws. Raw latents, like ``LatentStore.batches``: normalize downstream. On a bucketed store
  items have their bucket's shape: batch them with ``ds.batch_sampler(B)`` (one bucket per
  batch). ``text=True`` (or names) adds ``item["text"]``: cached text-encoder outputs of the row, name -> {states, mask[, pooled]}.
- :class:`LatentBatches` (iterable): ``LatentStore.batches`` as a dataset of whole batches, bitwise the
  same batches at the same speed (``DataLoader(ds, batch_size=None)``). ``with_index=True`` adds each
  batch's store positions, joined to ``index.parquet`` rows by ``LatentStore.rows(positions)``;
  ``text=`` adds the batches' cached text conditioning last (``LatentStore.batches``).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from multiprocessing.context import get_spawning_popen
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from lplkit.errors import ConfigError

__all__ = ["LatentBatches", "LatentDataset"]


class SharedEpoch:
    """An epoch number in shared memory, so ``set_epoch`` in the main process reaches DataLoader
    workers that already hold their copy of the dataset (``persistent_workers=True``): a plain
    attribute would be frozen in each worker at the value it had when the workers started.

    The value travels to workers by inheritance, fork or spawn (DataLoader hands the dataset to
    ``Process``); pickled any other way (saved to a file, sent to a process pool) it becomes a
    fresh shared value holding the current epoch.
    """

    def __init__(self, epoch: int = 0) -> None:
        self._value = multiprocessing.RawValue("q", int(epoch))

    def get(self) -> int:
        return int(self._value.value)

    def set(self, epoch: int) -> None:
        self._value.value = int(epoch)

    def __getstate__(self) -> dict[str, Any]:
        if get_spawning_popen() is not None:  # handed to a starting process: share the memory
            return {"value": self._value}
        return {"epoch": self.get()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "value" in state:
            self._value = state["value"]
        else:
            self.__init__(state["epoch"])  # type: ignore[misc]


def _item_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, position]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class LatentDataset(Dataset):
    """Map-style dataset over a store's ok samples (see the module docstring).

    Memory in DataLoader workers: a raw local store is read one row per item (``os.pread``, through
    the page cache that every worker shares; nothing of the store is held per worker); other stores
    read the item's chunk, or hold the store in RAM when it fits ``memory_budget``. The per-row
    arrays (ok positions, labels, and with ``keys`` the key and caption columns) are built here, in
    the process that makes the dataset, so forked workers share them instead of each reading its
    own copy (with the spawn start method each worker unpickles a copy).

    Args:
        store: an open :class:`lplkit.store.LatentStore`.
        seed: seeds the per-item draws (eps, flip).
        flip: draw flips when the store has flipped moments.
        keys: items carry "key" and "caption" (their columns read here: about 40 B a row with
            short keys); False leaves them out and reads nothing per row beyond the positions.
    """

    def __init__(
        self,
        store: Any,
        *,
        seed: int = 0,
        flip: bool = True,
        text: bool | str | list[str] = False,
        keys: bool = True,
    ) -> None:
        self.store = store
        self.text = store.text_names(text)  # checked now, not in a worker
        self.seed = int(seed)
        self._epoch = SharedEpoch()
        self.flip = bool(flip) and store.has_flips
        self.positions = np.asarray(store.ok_positions, dtype=np.int64)
        # bucketed store: items have their bucket's shape (batch them with `batch_sampler`)
        self._starts = (
            np.asarray([b.start for b in store.buckets], dtype=np.int64)
            if getattr(store, "bucketed", False)
            else None
        )
        self.keys = bool(keys)
        if self.keys:  # read once here, shared by forked workers (Arrow buffers are never written)
            self._keys = store.index_column("key")
            self._captions = store.index_column("caption")

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """New draws for a new epoch (as ``DistributedSampler.set_epoch``); reaches DataLoader
        workers, persistent ones included (the epoch lives in shared memory)."""
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.positions)

    def batch_sampler(self, batch_size: int, **kwargs: Any) -> Any:
        """A :class:`~lplkit.store.bucket_loader.BucketBatchSampler` over this dataset (every
        batch from one aspect-ratio bucket; ``DataLoader(ds, batch_sampler=...)``); ``kwargs``:
        seed, shuffle, rank, world_size, start_batch."""
        from lplkit.store.bucket_loader import BucketBatchSampler

        return BucketBatchSampler(self, batch_size, **kwargs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        position = int(self.positions[i])
        gen = _item_generator(self.seed, self.epoch, position)
        flipped = self.flip and bool(torch.rand((), generator=gen) < 0.5)
        src, row = self.store, position
        if self._starts is not None:  # a bucketed store: the row of the position's bucket
            b = int(np.searchsorted(self._starts, position, side="right")) - 1
            src, row = self.store.bucket_view(b), position - int(self._starts[b])
        if not src.reads_rows:  # zarr: chunks; hold the store in RAM if it fits the budget
            src._ram_block()
        m = src.read_row(row, flip=flipped)  # float32 (2, C, h, w): mean, std
        eps = torch.randn(m.shape[1:], generator=gen)
        latent = m[0] + m[1] * eps
        item = {"latent": latent, "label": int(self.store.labels[position]), "position": position}
        if self.keys:  # Arrow columns indexed per item: no Python list of every key
            item["key"] = self._keys[position].as_py()
            item["caption"] = self._captions[position].as_py()  # "" when the source had none
        if self.text:  # name -> {states (L, D), mask (L,), pooled (P,)}: the default collate stacks
            rows = src.read_text([row], self.text)
            item["text"] = {n: {a: v[0] for a, v in r.items()} for n, r in rows.items()}
        return item


class LatentBatches(IterableDataset):
    """``LatentStore.batches`` as an iterable dataset of whole batches (``batch_size=None`` in the
    ``DataLoader``). Yields ``(latents, labels)``, plus ``positions`` with ``with_index=True``.

    Use ``num_workers=0``: the store already reads the next window in a background thread and
    samples each batch on several threads; worker processes would each repeat the whole epoch.
    """

    def __init__(
        self,
        store: Any,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        with_index: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        text: bool | str | list[str] = False,
    ) -> None:
        self.store = store
        self.kwargs = dict(seed=seed, shuffle=shuffle, drop_last=drop_last, with_index=with_index,
                           rank=rank, world_size=world_size,
                           text=store.text_names(text))  # fmt: skip
        self.batch_size = int(batch_size)
        self._epoch = SharedEpoch()

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration yields (its shuffle and draws); reaches a persistent
        DataLoader worker (the epoch lives in shared memory)."""
        self._epoch.set(epoch)

    def __len__(self) -> int:
        kw = self.kwargs
        return self.store.num_batches(self.batch_size, kw["rank"], kw["world_size"],
                                      kw["drop_last"])  # fmt: skip

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ConfigError(
                "LatentBatches reads ahead and samples on threads itself; use num_workers=0 "
                f"(got {info.num_workers} workers, each would repeat the epoch)"
            )
        return self.store.batches(self.batch_size, epoch=self.epoch, **self.kwargs)
