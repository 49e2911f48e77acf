"""The writer lock: one encode job writes a store at a time.

`STORE/.lplkit-lock.json` holds the owner {host, pid, start_time, command, token}. It is created with
exclusive-create (`"xb"`), so two writers racing for it cannot both win. A second writer finding a live
owner gets `StoreLockedError` naming it. A lock whose pid is dead on this host is stale (a killed
encode): it is taken over with a warning. A lock from another host cannot be checked; the error says to
delete the file if that job is known to be gone.

Under torchrun, rank 0 takes the lock for the whole job and the other ranks write their shards under it
without touching the file (ranks never write the same shard, see `StoreWriter`).
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import sys
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from lplkit.errors import StoreLockedError
from lplkit.store.format import LOCK_FILE


@dataclass(frozen=True)
class LockOwner:
    """Who holds a store's write lock."""

    host: str
    pid: int
    start_time: float
    command: str
    token: str

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.start_time))
        return f"pid {self.pid} on {self.host}, started {started}: {self.command}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class StoreLock:
    """An exclusive writer lock on a store root (`fs` is an fsspec filesystem, `root` its path)."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.path = posixpath.join(root, LOCK_FILE)
        self.owner: LockOwner | None = None

    def read_owner(self) -> LockOwner | None:
        """The current owner, or None if unlocked (an unreadable lock file counts as stale)."""
        try:
            with self.fs.open(self.path, "rb") as f:
                data = json.loads(f.read().decode())
            return LockOwner(**{k: data[k] for k in LockOwner.__dataclass_fields__})
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return LockOwner(
                host="?", pid=-1, start_time=0.0, command="<unreadable lock>", token=""
            )

    def _is_stale(self, owner: LockOwner) -> bool:
        if owner.pid < 0:
            return True
        return owner.host == socket.gethostname() and not _pid_alive(owner.pid)

    def acquire(self) -> LockOwner:
        """Take the lock or raise `StoreLockedError`; recover a stale lock with a warning."""
        me = LockOwner(
            host=socket.gethostname(),
            pid=os.getpid(),
            start_time=time.time(),
            command=" ".join(sys.argv) or "python",
            token=uuid.uuid4().hex,
        )
        payload = json.dumps(asdict(me), indent=2).encode()
        for _ in range(3):
            try:
                self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
                with self.fs.open(self.path, "xb") as f:
                    f.write(payload)
                self.owner = me
                return me
            except FileExistsError:
                owner = self.read_owner()
                if owner is None:
                    continue  # released between our two calls: try again
                if not self._is_stale(owner):
                    raise StoreLockedError(
                        f"{self.path} is locked by a running writer ({owner.describe()}); wait for it "
                        "to finish, or if that job is gone (another host), delete the lock file"
                    ) from None
                warnings.warn(
                    f"recovering stale store lock {self.path} left by a dead writer "
                    f"({owner.describe()})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.fs.rm(self.path)
        raise StoreLockedError(f"could not take the lock {self.path}: it keeps changing owner")

    def release(self) -> None:
        """Remove the lock if we still own it (a lock someone else recovered is left alone)."""
        if self.owner is None:
            return
        current = self.read_owner()
        if current is not None and current.token == self.owner.token:
            self.fs.rm(self.path)
        self.owner = None
