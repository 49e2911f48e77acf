"""The process group of an encode job, on `lplkit.distributed`: one process or torchrun ranks.

Collectives happen only at phase boundaries (load, create the store, sum the counts, finalize).
`rank0_first` runs a phase on rank 0 before the others (one download, one store creation), and a
phase that fails on one rank makes every rank stop with an error instead of leaving the others
blocked in the next collective. Setup, device resolution and rank-0-first live in
`lplkit.distributed`; this module adds the encode job's collectives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from lplkit.distributed import DistInfo, init_distributed, rank0_first, resolve_device, shutdown
from lplkit.errors import StoreError

__all__ = ["DistContext", "resolve_device"]


class DistContext:
    """The process group of a torchrun job (gloo on CPU, NCCL on CUDA), or a no-op for one process.

    Collectives are used only at phase boundaries; a phase that fails on one rank makes every rank
    raise (instead of leaving the others blocked in the next collective).
    """

    def __init__(self, rank: int, world_size: int, local_rank: int, owns_group: bool) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.owns_group = owns_group
        self.device = torch.device("cpu")  # where collective tensors live

    @classmethod
    def from_env(cls, device: str) -> DistContext:
        info = init_distributed(device)
        ctx = cls(info.rank, info.world_size, info.local_rank, info.owns_group)
        ctx.device = info.collective_device
        return ctx

    @property
    def info(self) -> DistInfo:
        return DistInfo(
            rank=self.rank,
            world_size=self.world_size,
            local_rank=self.local_rank,
            device=self.device,
            owns_group=self.owns_group,
        )

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owns_group:
            shutdown(self.info)

    def rank0_first(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on rank 0, then on the other ranks (downloads, store creation happen once)."""
        return rank0_first(fn, self.info, error=StoreError)

    def sum_ints(self, values: list[int]) -> list[int]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
