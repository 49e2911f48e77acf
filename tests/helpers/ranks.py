"""K gloo ranks as forked copies of the test process: the environment torchrun gives each rank
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), without the launcher and without each
rank re-importing torch and diffusers (15-40 s per process on the shared 2-core box).

A forked child inherits the parent's imported modules; torch re-initializes its thread pool after
a fork and zarr resets its event loop (`os.register_at_fork`). Each rank runs `fn(rank)` and sends
back its return value, or the traceback of what it raised.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_KEPT: list[Any] = []


def _keep_ddp_wrappers_alive() -> None:
    """A DDP wrapper freed after `destroy_process_group` (when the trainer goes out of scope) can
    block for ever in ~ProcessGroupGloo, joining its worker threads once the other rank has
    exited (seen with forked ranks). The rank ends with os._exit, so nothing needs freeing: keep
    every wrapper referenced until then."""
    from torch.nn.parallel import DistributedDataParallel

    init = DistributedDataParallel.__init__

    def kept_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _KEPT.append(self)

    DistributedDataParallel.__init__ = kept_init  # type: ignore[method-assign]


def _rank_main(fn: Callable[[int], Any], rank: int, world: int, port: int, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    code = 0
    try:
        import torch

        # one thread: GNU OpenMP is not fork-safe (a rank that opens a thread team after the
        # parent used one blocks for ever in gomp_team_barrier_wait), and 2 ranks share 2 cores
        torch.set_num_threads(1)
        _keep_ddp_wrappers_alive()
        results.put((rank, True, fn(rank)))
    except BaseException:  # SystemExit included: the CLI exits
        results.put((rank, False, traceback.format_exc()))
        code = 1
    finally:
        results.close()
        results.join_thread()  # flush the queue's feeder thread: os._exit would drop the result
        os._exit(code)  # never run the parent's (pytest's) exit handlers in the child


def run_forked_ranks(fn: Callable[[int], Any], world: int = 2, timeout: float = 240) -> list[Any]:
    """`fn(rank)` on `world` forked gloo ranks, one torch thread each; their return values in rank
    order. A rank that raised (or died) fails the calling test with its traceback. A result compared
    bit for bit with this process's must be computed here with one thread too (the thread count
    changes the float reduction order of the convolutions)."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(fn, r, world, port, results)) for r in range(world)
    ]
    for p in procs:
        p.start()
    got: dict[int, Any] = {}
    errors = []
    try:
        for _ in range(world):
            rank, ok, value = results.get(timeout=timeout)
            if ok:
                got[rank] = value
            else:  # the other ranks may wait in a collective forever: stop them below
                errors.append(f"rank {rank}:\n{value}")
                break
    finally:
        for p in procs:
            p.join(timeout=0 if errors else 30)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return [got[r] for r in range(world)]
