"""The process group of an encode job: the same code runs as one process or under torchrun.

Under torchrun (`WORLD_SIZE` > 1) the group uses gloo on CPU and NCCL on CUDA. Collectives happen only
at phase boundaries (load, create the store, sum the counts, finalize). `rank0_first` runs a phase on
rank 0 before the others (one download, one store creation), and a phase that fails on one rank
makes every rank stop with an error instead of leaving the others blocked in the next collective.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from lplkit.errors import StoreError

__all__ = ["DistContext", "resolve_device"]


def resolve_device(spec: str, local_rank: int) -> torch.device:
    """`auto` = CUDA when available; a bare `cuda` becomes `cuda:LOCAL_RANK` under torchrun."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


class DistContext:
    """The process group of a torchrun job (gloo on CPU, NCCL on CUDA), or a no-op for one process.

    Collectives are used only at phase boundaries; a phase that fails on one rank makes every rank
    raise (instead of leaving the others blocked in the next collective).
    """

    def __init__(self, rank: int, world_size: int, local_rank: int, owns_group: bool) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.owns_group = owns_group
        self.device = torch.device("cpu")

    @classmethod
    def from_env(cls, device: str) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(0, 1, 0, False)
        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device, local)
        owns = not dist.is_initialized()
        if owns:
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        ctx = cls(rank, world, local, owns)
        ctx.device = dev if dev.type == "cuda" else torch.device("cpu")  # collective tensors
        return ctx

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def _all_ok(self, ok: bool) -> bool:
        flag = torch.tensor([1 if ok else 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def rank0_first(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on rank 0, then on the other ranks (downloads, store creation happen once)."""
        if self.world_size == 1:
            return fn()
        result, error = None, None
        for phase in (0, 1):
            if (self.rank == 0) == (phase == 0):
                try:
                    result = fn()
                except Exception as exc:
                    error = exc
            if not self._all_ok(error is None):
                if error is not None:
                    raise error
                raise StoreError(
                    f"rank {self.rank}: another rank failed (see its message); stopping"
                )
        return result

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
