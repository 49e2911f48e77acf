"""Run a benchmark (or any command that prints JSON) and write its raw record for docs/results/.

    python benchmarks/record.py --out docs/results/cpu-dev/x.json -- python benchmarks/y.py ... --json

The record holds what a reader needs to trust and re-run a number in the docs: the exact command and
environment variables that change timings, the versions of python/torch/diffusers/zarr/lplkit (git
commit), the machine (CPU model, cores, GPU, load average before and after: the dev box is shared) and
the command's JSON output unchanged under "result". tests/unit/project/test_docs_numbers.py checks the docs'
tables against these files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

TIMING_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [x.strip() for x in out.stdout.splitlines() if x.strip()] if out.returncode == 0 else []


def _git_commit() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance() -> dict[str, Any]:
    """Versions and machine of this process's environment (the same venv runs the command)."""
    return {
        "versions": {
            "python": platform.python_version(),
            **{d: _version(d) for d in ("torch", "diffusers", "zarr", "numpy", "lplkit")},
            "lplkit_commit": _git_commit(),
        },
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "gpus": _gpus(),
            "platform": platform.platform(),
        },
    }


def parse_json_output(stdout: str) -> Any:
    """The command's JSON: the whole stdout, else from its first line that opens an object."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        lines = stdout.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("{"):
                try:
                    return json.loads("\n".join(lines[i:]))
                except json.JSONDecodeError:
                    continue
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, required=True, help="raw record to write (JSON)")
    p.add_argument(
        "--note", default="", help="what the reader should know (e.g. the machine was loaded)"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the command after --")
    environment = provenance()  # before the run: the code the command runs
    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    record = {
        "command": shlex.join(command),
        "env": {k: os.environ[k] for k in TIMING_ENV if k in os.environ},
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_s": round(wall, 1),
        "returncode": proc.returncode,
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "note": args.note,
        **environment,
        "result": parse_json_output(proc.stdout) if proc.returncode == 0 else proc.stdout[-4000:],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out} (rc {proc.returncode}, {wall:.0f} s)", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
