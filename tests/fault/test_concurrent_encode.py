"""Two encoders on one store: the second is refused with the owner's pid/host/command (and so is
`verify --repair`, which would remove markers under the running writer); the first finishes untouched.
A lock left by a dead process is recovered with a warning. Never silent loss.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import run_cli, subprocess_env
from helpers.images import write_image_folder
from helpers.slow_source import SCRIPT as SLOW_SOURCE
from helpers.stores import read_store

HERE = Path(__file__).resolve().parent
# Some shards are encoded here (the reference, the re-run) and some in the subprocess.
# slow enough (20 images x 0.4 s) that the in-process second encoder meets the running first one even
# on a loaded machine (at 0.1 s the first one could finish before the second reached the lock)
ENV = subprocess_env(LPLKIT_SLOW_SOURCE_S="0.4")

# Recovering from a killed/damaged writer is the point here: lplkit's recovery notice is expected
# (shown, as users see it; not an error).
pytestmark = pytest.mark.filterwarnings("default:recovered stale:RuntimeWarning")


def _args(dataset: str, out: Path, vae: Path) -> list[str]:
    return ["encode", "--dataset", dataset, "--res", "16", "--vae", str(vae), "--out", str(out),
            "--shard-size", "4", "--batch-size", "4", "--workers", "0", "--device", "cpu"]  # fmt: skip


def _main(args: list[str], capsys) -> tuple[int, str]:
    code, _, err = run_cli(args, capsys)
    return code, " ".join(err.split())


def _read(path: Path) -> dict:
    store = read_store(path)
    return {
        "moments": store["moments"].tobytes(),
        "labels": store["labels"].tobytes(),
        "index": store["index"],
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("cc") / "images", {"a": 10, "b": 10})


def test_second_encoder_is_refused_and_the_first_finishes(images, tiny_vae_dir, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, str(SLOW_SOURCE),
           *_args(f"slowfolder:{images}", out, tiny_vae_dir)]  # fmt: skip
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = out / ".lplkit-lock.json"
        deadline = time.monotonic() + 180
        while not lock.exists():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        owner = json.loads(lock.read_text())
        assert owner["pid"] == first.pid and owner["host"] == socket.gethostname()

        code, err = _main(_args(str(images), out, tiny_vae_dir), capsys)
        assert first.poll() is None, "the first encoder finished too early for this test"
        assert code == 4, err  # StoreLockedError
        assert "locked by a running writer" in err and f"pid {first.pid} on" in err
        assert "slow_source.py encode" in err  # the owner's command line

        code, err = _main(["verify", str(out), "--repair"], capsys)
        assert code == 4 and f"pid {first.pid}" in err  # repair would remove markers: refused
        assert first.wait(timeout=300) == 0, first.stderr.read().decode()[-2000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
            first.wait()
        first.stderr.close()

    from lplkit.store.verify import verify_store

    assert verify_store(str(out)).ok
    assert not (out / ".lplkit-lock.json").exists()
    ref = tmp_path / "ref.zarr"
    assert _main(_args(str(images), ref, tiny_vae_dir), capsys)[0] == 0
    assert _read(out) == _read(ref)  # the refused encoder changed nothing


def test_stale_lock_of_a_dead_process_is_recovered(images, tiny_vae_dir, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    out.mkdir()
    (out / ".lplkit-lock.json").write_text(json.dumps({
        "host": socket.gethostname(), "pid": int(dead.stdout), "start_time": 0.0,
        "command": "lplkit encode (killed)", "token": "x"}))  # fmt: skip
    code, _, err = run_cli(_args(str(images), out, tiny_vae_dir), capsys)
    assert code == 0, err
    # the notice is one line on stderr, not Python's "file:line: RuntimeWarning" + source line
    notice = [ln for ln in err.splitlines() if "stale store lock" in ln]
    assert len(notice) == 1 and notice[0].startswith("warning: recovered stale store lock"), err
    assert "lplkit encode (killed)" in notice[0] and "RuntimeWarning" not in err
    assert not (out / ".lplkit-lock.json").exists()
