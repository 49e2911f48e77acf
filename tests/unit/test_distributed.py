"""lplkit.distributed: torchrun environment, device resolution, rank-0-first, on one process and
on two gloo ranks (torch.multiprocessing, the same group torchrun would create)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from lplkit.distributed import (
    DistInfo,
    env_rank,
    env_world,
    group_rank_world,
    init_distributed,
    rank0_first,
    resolve_device,
)
from lplkit.errors import StoreError


def test_env_world_reads_torchrun_variables(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert env_world() == (0, 1, 0) and env_rank() == 0
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_world() == (3, 4, 1) and env_rank() == 3


@pytest.mark.parametrize(
    ("spec", "local", "expected"),
    [
        ("cpu", None, torch.device("cpu")),
        ("cpu", 2, torch.device("cpu")),
        ("cuda", None, torch.device("cuda")),
        ("cuda", 2, torch.device("cuda", 2)),
        ("cuda:1", 2, torch.device("cuda", 1)),  # an explicit index is kept
    ],
)
def test_resolve_device(spec, local, expected):
    assert resolve_device(spec, local) == expected


def test_resolve_auto_follows_cuda_availability():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(device=torch.device("cpu"))
    assert not info.enabled and info.is_main and group_rank_world() == (0, 1)
    assert rank0_first(lambda: 7, info) == 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, marker: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))  # fmt: skip
    from lplkit.distributed import DistContext

    info = init_distributed("cpu")
    path = Path(marker)

    def mark() -> bool:  # rank 0 runs first: only rank 1 finds the file rank 0 wrote
        seen = path.exists()
        path.touch()
        return seen

    seen = rank0_first(mark, info)

    def fail_on_rank_1() -> None:
        if rank == 1:
            raise ValueError("boom on rank 1")

    try:
        DistContext.from_env("cpu", error=StoreError).rank0_first(fail_on_rank_1)
        outcome = "no error"
    except ValueError as exc:
        outcome = f"own: {exc}"
    except StoreError as exc:
        outcome = f"other: {type(exc).__name__} {exc}"
    results.put((rank, info.owns_group, group_rank_world(), seen, outcome))
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # ~15-60 s: two spawned processes import torch
def test_two_gloo_ranks_rank0_first_and_failure_on_one_rank(tmp_path):
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    args = (_free_port(), str(tmp_path / "marker"), results)
    torch.multiprocessing.start_processes(_worker, args=args, nprocs=2, start_method="spawn")
    got = sorted(results.get(timeout=60) for _ in range(2))
    assert got[0][:4] == (0, True, (0, 2), False) and got[1][:4] == (1, True, (1, 2), True)
    assert got[1][4] == "own: boom on rank 1"
    # the rank that did not fail stops with the caller's error type (encode: StoreError, exit 4)
    assert got[0][4].startswith("other: StoreError rank 0: another rank failed")
