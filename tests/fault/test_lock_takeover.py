"""Stale-lock takeover is atomic, and a damaged lock file is one warning (issue #16, item 4).

After a kill -9 the lock names a dead pid; the next writers (often several at once: a retried job
array) all find it stale. Exactly one of them may win. The race is run with forked processes released
together by a barrier, each holding what it got until every one has answered.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from lplkit.errors import StoreLockedError
from lplkit.store.lock import StoreLock
from lplkit.store.sidecar import url_to_fs

TRIALS, RACERS = 30, 6


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)


def _write_lock(root: Path, **fields) -> None:
    data = {"host": socket.gethostname(), "pid": _dead_pid(), "start_time": 0.0,
            "command": "lplkit encode (killed)", "token": "stale"}  # fmt: skip
    data.update(fields)
    root.mkdir(parents=True, exist_ok=True)
    (root / ".lplkit-lock.json").write_text(json.dumps(data))


def _racer(root: str, barrier, results, hold) -> None:
    warnings.simplefilter("ignore")
    lock = StoreLock(*url_to_fs(root))
    barrier.wait()
    try:
        lock.acquire()
        results.put("won")
    except StoreLockedError:
        results.put("refused")
    except BaseException as exc:  # anything else is a failure the parent reports
        results.put(f"{type(exc).__name__}: {exc}")
    hold.wait(60)  # keep the lock until every racer has answered
    os._exit(0)


def test_concurrent_takeover_of_a_stale_lock_has_one_winner(tmp_path):
    ctx = multiprocessing.get_context("fork")
    outcomes = []
    for trial in range(TRIALS):
        root = tmp_path / f"s{trial}.zarr"
        _write_lock(root)
        barrier, results, hold = ctx.Barrier(RACERS), ctx.Queue(), ctx.Event()
        procs = [ctx.Process(target=_racer, args=(str(root), barrier, results, hold))
                 for _ in range(RACERS)]  # fmt: skip
        for p in procs:
            p.start()
        got = sorted(results.get(timeout=60) for _ in procs)
        hold.set()
        for p in procs:
            p.join(60)
        outcomes.append(got)
        owner = json.loads((root / ".lplkit-lock.json").read_text())
        assert owner["token"] != "stale" and owner["pid"] in {p.pid for p in procs}
    bad = [(i, got) for i, got in enumerate(outcomes) if got.count("won") != 1]
    assert not bad, f"{len(bad)}/{TRIALS} trials without exactly one winner: {bad[:3]}"
    assert all(set(got) <= {"won", "refused"} for got in outcomes)


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"pid": 1e20}, "pid 1e+20 is not a process id"),
        ({"pid": "12"}, "pid '12' is not a process id"),
        ({"pid": 0}, "pid 0 is not a process id"),
        ({"pid": True}, "pid True is not a process id"),
        ({"start_time": 1e300}, "start_time 1e+300 is not a time"),
        ({"host": None}, "'host' is not a string"),
    ],
    ids=["pid-1e20", "pid-str", "pid-0", "pid-bool", "start-time", "host-null"],
)
def test_a_damaged_lock_file_is_recovered_with_one_warning(fields, problem, tmp_path):
    root = tmp_path / "s.zarr"
    _write_lock(root, **fields)
    lock = StoreLock(*url_to_fs(str(root)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lock.acquire()
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and problem in msgs[0] and "\n" not in msgs[0], msgs
    assert json.loads((root / ".lplkit-lock.json").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (root / ".lplkit-lock.json").exists()
