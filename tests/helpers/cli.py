"""The CLI in this process, and the environment of `python -m lplkit` subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], capsys=None) -> tuple[int, str, str]:
    """`lplkit ARGS` in this process: (exit code, stdout, stderr); the output only with `capsys`."""
    from lplkit.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    if capsys is None:
        return int(exc.value.code), "", ""
    out = capsys.readouterr()
    return int(exc.value.code), out.out, out.err


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m lplkit` subprocess whose results are compared bit for bit with
    this process's: the same torch thread count (another count changes the float reduction order of
    the convs), hubs offline, the repository importable."""
    import torch

    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra}  # fmt: skip
