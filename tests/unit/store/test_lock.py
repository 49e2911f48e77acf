"""Writer lock: live owner refused (named), stale owner recovered with a warning, ranks share it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from lplkit.errors import StoreLockedError
from lplkit.store import StoreWriter, new_manifest
from lplkit.store.lock import StoreLock
from lplkit.store.sidecar import url_to_fs
from lplkit.store.verify import repair_store, verify_store


def _manifest():
    return new_manifest(
        autoencoder={"id": "ae"},
        resolution=16,
        latent_shape=(4, 2, 2),
        source={"id": "s", "count": 8},
        shard_size=4,
    )


def _write_lock(path, **owner):
    data = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start_time": 0.0,
        "command": "x",
        "token": "t",
    }
    data.update(owner)
    path.mkdir(parents=True, exist_ok=True)
    (path / ".lplkit-lock.json").write_text(json.dumps(data))


def test_second_writer_on_live_lock_is_refused_with_owner(tmp_path):
    url = str(tmp_path / "s.zarr")
    first = StoreWriter.create_or_resume(url, _manifest())
    with pytest.raises(StoreLockedError) as info:
        StoreWriter.create_or_resume(url, _manifest())
    msg = str(info.value)
    assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg
    first.close()
    assert not (tmp_path / "s.zarr" / ".lplkit-lock.json").exists()
    StoreWriter.create_or_resume(url, _manifest()).close()  # free again


def test_stale_lock_of_dead_pid_is_recovered_with_warning(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(proc.stdout)  # that process has exited
    _write_lock(tmp_path / "s.zarr", pid=dead_pid, command="lplkit encode (killed)")
    with pytest.warns(RuntimeWarning, match="stale store lock"):
        writer = StoreWriter.create_or_resume(str(tmp_path / "s.zarr"), _manifest())
    owner = json.loads((tmp_path / "s.zarr" / ".lplkit-lock.json").read_text())
    assert owner["pid"] == os.getpid() and owner["token"] != "t"
    writer.close()


def test_lock_from_another_host_is_not_recovered(tmp_path):
    _write_lock(tmp_path / "s.zarr", host="some-other-host", pid=1)
    with pytest.raises(StoreLockedError, match=r"some-other-host.*delete the lock file"):
        StoreWriter.create_or_resume(str(tmp_path / "s.zarr"), _manifest())


def test_release_leaves_a_lock_someone_else_took_over(tmp_path):
    fs, root = url_to_fs(str(tmp_path))
    lock = StoreLock(fs, root)
    lock.acquire()
    _write_lock(tmp_path, token="someone-else")
    lock.release()
    assert json.loads((tmp_path / ".lplkit-lock.json").read_text())["token"] == "someone-else"


def test_ranks_share_rank0_lock_and_repair_respects_it(tmp_path):
    url = str(tmp_path / "s.zarr")
    w0 = StoreWriter.create_or_resume(url, _manifest(), rank=0, world_size=2)
    w1 = StoreWriter.create_or_resume(url, _manifest(), rank=1, world_size=2, wait_timeout=5)
    assert w1.lock is None and w0.lock is not None
    with pytest.raises(StoreLockedError):
        repair_store(url, verify_store(url))
    w1.close()
    assert (tmp_path / "s.zarr" / ".lplkit-lock.json").exists()  # rank 1 never touches the lock
    w0.close()
    assert not (tmp_path / "s.zarr" / ".lplkit-lock.json").exists()
