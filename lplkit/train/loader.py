"""A resumable cursor over `LatentStore.batches`: endless epochs, position = (epoch, batch).

The store's loader is deterministic in (seed, epoch, start_batch, rank, world_size): it shuffles
with the seed and epoch and samples latents from the stored moments with RNG derived from them. So
the cursor only needs to remember where it is to resume exactly; no data is replayed or skipped.
Each rank serves its own `1/world_size` share (the store's `rank`/`world_size` split; above the
store's memory budget each rank also reads only its own chunks, see `lplkit.store.shuffle.RankOrder`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from lplkit.errors import StoreError


class LoaderCursor:
    """`next()` returns (latents (b, C, h, w) float32 raw, labels (b,) int64, text); rolls over
    epochs. `text` is the batch's cached text conditioning of the encoders `text` names (name ->
    {states, mask[, pooled]}), None without."""

    def __init__(
        self,
        store: Any,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        epoch: int = 0,
        batch: int = 0,
        text: list[str] | None = None,
    ) -> None:
        self.store = store
        self.text = text
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = epoch
        self.batch = batch
        self._it: Iterator[tuple[Any, ...]] | None = None

    @property
    def position(self) -> dict[str, int]:
        """Where the next batch comes from: {"epoch", "batch"}."""
        return {"epoch": self.epoch, "batch": self.batch}

    def _open(self) -> Iterator[tuple[Any, ...]]:
        split: dict[str, Any] = (
            {} if self.world_size == 1 else {"rank": self.rank, "world_size": self.world_size}
        )
        if self.text:
            split["text"] = self.text
        return iter(
            self.store.batches(
                self.batch_size,
                seed=self.seed,
                shuffle=True,
                epoch=self.epoch,
                start_batch=self.batch,
                **split,
            )
        )

    def next(self) -> tuple[Tensor, Tensor, Any]:
        empty_epochs = 0
        while True:
            if self._it is None:
                self._it = self._open()
            text = None
            try:
                latents, labels, *rest = next(self._it)
                text = rest[0] if rest else None
            except StopIteration:
                latents = None
            # A short last batch would change the batch size mid-run; treat it as the epoch's end.
            if latents is None or latents.shape[0] < self.batch_size:
                self._it = None
                self.epoch, self.batch = self.epoch + 1, 0
                empty_epochs += 1
                if empty_epochs > 1:
                    raise StoreError(
                        f"the store has fewer usable samples than one batch of {self.batch_size} "
                        f"per rank; lower --batch-size or add data"
                    )
                continue
            self.batch += 1
            return latents, labels, text
