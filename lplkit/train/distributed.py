"""torch.distributed for training: the names the trainer has always used, from `lplkit.distributed`.

Under torchrun (`WORLD_SIZE` > 1 in the environment) the process group uses NCCL on CUDA and gloo
on CPU; each rank pins its GPU by `LOCAL_RANK`. Rank 0 alone writes checkpoints and logs.
"""

from __future__ import annotations

from lplkit.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    init_distributed,
    resolve_device,
    shutdown,
)

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "init_distributed",
    "resolve_device",
    "shutdown",
]
