"""benchmarks/record.py: the raw record of a run holds the command's JSON unchanged and its provenance."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from helpers.cli import REPO

RECORD = REPO / "benchmarks" / "record.py"


def test_record_wraps_the_commands_json_with_command_versions_and_machine(tmp_path):
    out = tmp_path / "r.json"
    script = "print('a table line'); print('{\"ratio\": 0.912, \"rows\": [1, 2]}')"
    cmd = [
        sys.executable,
        str(RECORD),
        "--out",
        str(out),
        "--note",
        "loaded",
        "--",
        sys.executable,
        "-c",
        script,
    ]
    subprocess.run(cmd, check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    rec = json.loads(out.read_text())
    assert rec["result"] == {"ratio": 0.912, "rows": [1, 2]}  # from the line that opens the JSON
    assert shlex.split(rec["command"]) == [sys.executable, "-c", script]  # re-runnable as written
    assert (
        rec["env"] == {"OMP_NUM_THREADS": "1"}
        and rec["note"] == "loaded"
        and rec["returncode"] == 0
    )
    assert rec["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(rec["versions"]) >= {"torch", "diffusers", "zarr"} and rec["machine"]["cores"] >= 1
    assert len(rec["load_average_1_5_15"]["before"]) == 3


def test_a_failing_command_is_recorded_with_its_exit_code(tmp_path):
    out = tmp_path / "r.json"
    cmd = [
        sys.executable,
        str(RECORD),
        "--out",
        str(out),
        "--",
        sys.executable,
        "-c",
        "print('x'); raise SystemExit(3)",
    ]
    assert subprocess.run(cmd).returncode == 3
    rec = json.loads(out.read_text())
    assert rec["returncode"] == 3 and rec["result"] == "x\n"
