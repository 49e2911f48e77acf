"""torch.distributed for every command: the same code runs as one process or under `torchrun`.

Under torchrun (`WORLD_SIZE` > 1 in the environment) `init_distributed` joins the process group,
NCCL on CUDA and gloo on CPU, and pins each rank's GPU by `LOCAL_RANK` (one GPU per rank, as NCCL
requires). Collectives happen only at phase boundaries; `rank0_first` runs a phase on rank 0 before
the others (one download, one store creation) and turns a failure on any rank into an error on
every rank instead of leaving the others blocked in the next collective.

torch is imported inside the functions: the CLI reads `env_rank()` before its heavy imports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from lplkit.errors import LplkitError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DistContext",
    "DistInfo",
    "all_ok",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "env_rank",
    "env_world",
    "group_rank_world",
    "init_distributed",
    "rank0_first",
    "resolve_device",
    "shutdown",
]

T = TypeVar("T")


def _cpu() -> torch.device:
    import torch

    return torch.device("cpu")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank, world size, local rank, compute device.

    `owns_group`: `init_distributed` created the process group (so `shutdown` destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=_cpu)
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def collective_device(self) -> torch.device:
        """Where tensors for collectives live: the GPU under NCCL, the CPU under gloo."""
        return self.device if self.device.type == "cuda" else _cpu()


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) that torchrun set in the environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def env_rank() -> int:
    """This process's torchrun rank (0 when not under torchrun), without importing torch."""
    return int(os.environ.get("RANK", "0"))


def group_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialized default process group; (0, 1) when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """`auto` = CUDA when available, else CPU; with `local_rank` (under torchrun) a bare `cuda`
    becomes `cuda:LOCAL_RANK`. An explicit index (`cuda:1`) is kept."""
    import torch

    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda" and device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; a no-op single-process otherwise.

    The device is `resolve_device(device)`; under torchrun a CUDA device is this rank's
    `cuda:LOCAL_RANK`, made the current device. An already initialized group is reused (and left
    to its owner).
    """
    import torch
    import torch.distributed as dist

    rank, world, local = env_world()
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def all_ok(ok: bool, info: DistInfo) -> bool:
    """True on every rank when `ok` is true on every rank (a MIN all-reduce)."""
    if not info.enabled:
        return ok
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], device=info.collective_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def rank0_first(
    fn: Callable[[], T], info: DistInfo, *, error: type[LplkitError] = LplkitError
) -> T:
    """Run `fn` on rank 0, then on the other ranks (downloads, store creation happen once).

    An exception on one rank is raised there and makes every other rank raise `error` (whose exit
    code the CLI reports) instead of blocking in the next collective.
    """
    if not info.enabled:
        return fn()
    result: Any = None
    failure: Exception | None = None
    for phase in (0, 1):
        if (info.rank == 0) == (phase == 0):
            try:
                result = fn()
            except Exception as exc:
                failure = exc
        if not all_ok(failure is None, info):
            if failure is not None:
                raise failure
            raise error(f"rank {info.rank}: another rank failed (see its message); stopping")
    return result


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op single-process)."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's `obj` on every rank (a picklable object; the identity single-process)."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of `t` over ranks (in place for the collective; returns `t`)."""
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `t` over ranks (in place; returns `t`)."""
    if info.enabled:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shutdown(info: DistInfo) -> None:
    """Destroy the process group if this process joined one."""
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class DistContext:
    """A job's process group as a context manager, with the object collectives a job needs.

    One process: every collective is the identity. Under torchrun: the group from
    `init_distributed` (gloo on CPU, NCCL on CUDA), shut down on exit when this context created it.
    Collectives are used only at phase boundaries (encode: load, create the store, sum the counts,
    finalize); a phase run through `rank0_first` that fails on one rank makes every rank raise
    `error` instead of leaving the others blocked in the next collective.
    """

    def __init__(
        self,
        rank: int,
        world_size: int,
        local_rank: int,
        owns_group: bool,
        error: type[LplkitError] = LplkitError,
    ) -> None:
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.owns_group = owns_group
        self.error = error
        self.device = _cpu()  # where collective tensors live

    @classmethod
    def from_env(cls, device: str, error: type[LplkitError] = LplkitError) -> DistContext:
        info = init_distributed(device)
        ctx = cls(info.rank, info.world_size, info.local_rank, info.owns_group, error)
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

    def rank0_first(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0, then on the other ranks (downloads, store creation happen once)."""
        return rank0_first(fn, self.info, error=self.error)

    def sum_ints(self, values: list[int]) -> list[int]:
        if self.world_size == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        return broadcast_object(obj, self.info)
