"""The writer lock: one encode job writes a store at a time (and one trainer a run directory).

`STORE/.lplkit-lock.json` holds the owner {host, pid, start_time, command, token}. A new lock is
created whole and exclusively: locally, the JSON is written to a temp file that is then hard-linked
to the lock path (`link` fails when the path exists, and readers never see a half-written lock); on
object stores with an exclusive put (`"xb"`: S3's If-None-Match). Two writers racing for a free lock
cannot both win. A second writer finding a live owner gets `StoreLockedError` naming it.

A lock whose pid is dead on this host is stale (a killed encode): it is taken over with a warning.
Locally the takeover holds an `flock` on the lock's folder while it re-reads the lock, checks that it
is still the same stale owner (token), removes it and links its own, so of several processes taking
over one stale lock at once exactly one wins (the kernel releases an flock when its holder dies, so
the guard itself never goes stale). On object stores the takeover is remove + exclusive put, which
is not atomic against a second takeover at the same moment (see docs/reliability.md).

A lock file whose fields are not what lplkit writes (unparsable JSON, a pid that is not a positive
process id such as 0, 1e20 or "12", a non-finite start time) is damaged, not held: it is taken over
with a warning naming the problem. A lock from another host cannot be checked; the error says to
delete the file if that job is known to be gone.

Under torchrun, rank 0 takes the lock for the whole job and the other ranks write their shards under it
without touching the file (ranks never write the same shard, see `StoreWriter`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import posixpath
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from lplkit.errors import LplkitError, StoreLockedError
from lplkit.store.format import LOCK_FILE
from lplkit.store.sidecar import is_local

# Linux's pid_max is at most 2**22; anything outside (0, 2**22] is not a process id.
_MAX_PID = 1 << 22
# A lock file is ~300 bytes; a bigger one is damaged (and must not be read whole).
_MAX_LOCK_BYTES = 64 << 10


@dataclass(frozen=True)
class LockOwner:
    """Who holds a write lock (`problem`: why the lock file is damaged, "" when it is sound)."""

    host: str
    pid: int
    start_time: float
    command: str
    token: str
    problem: str = ""

    def describe(self) -> str:
        if self.problem:
            return f"damaged lock: {self.problem}"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.start_time))
        return f"pid {self.pid} on {self.host}, started {started}: {self.command}"


def _damaged(problem: str) -> LockOwner:
    return LockOwner(host="?", pid=-1, start_time=0.0, command="", token="", problem=problem)


def parse_owner(raw: bytes) -> LockOwner:
    """The owner a lock file names, or a damaged owner saying what is wrong with it."""
    try:
        data = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _damaged("not valid JSON")
    if not isinstance(data, dict):
        return _damaged("not a JSON object")
    for key in ("host", "command", "token"):
        if not isinstance(data.get(key), str):
            return _damaged(f"{key!r} is not a string")
    pid, start = data.get("pid"), data.get("start_time")
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= _MAX_PID:
        return _damaged(f"pid {pid!r} is not a process id")
    if not isinstance(start, int | float) or isinstance(start, bool) or not math.isfinite(start):
        return _damaged(f"start_time {start!r} is not a time")
    if not 0 <= start < 1e11:  # time.localtime overflows far beyond any real start time
        return _damaged(f"start_time {start!r} is not a time")
    return LockOwner(data["host"], pid, float(start), data["command"], data["token"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class StoreLock:
    """An exclusive writer lock on a folder (`fs` an fsspec filesystem, `root` its path).

    `name` is the lock file's name in `root`, `error` the `LplkitError` raised when a live process
    holds it, `what` how messages call the folder ("store", "run directory").
    """

    def __init__(
        self,
        fs: Any,
        root: str,
        *,
        name: str = LOCK_FILE,
        error: type[LplkitError] = StoreLockedError,
        what: str = "store",
    ) -> None:
        self.fs = fs
        self.path = posixpath.join(root, name)
        self.error = error
        self.what = what
        self.owner: LockOwner | None = None

    def read_owner(self) -> LockOwner | None:
        """The current owner, or None if unlocked (a damaged lock file has `problem` set)."""
        try:
            with self.fs.open(self.path, "rb") as f:
                raw = f.read(_MAX_LOCK_BYTES + 1)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return _damaged("it is a directory")
        if len(raw) > _MAX_LOCK_BYTES:
            return _damaged(f"larger than {_MAX_LOCK_BYTES} bytes")
        return parse_owner(raw)

    def _is_stale(self, owner: LockOwner) -> bool:
        if owner.problem:
            return True
        return owner.host == socket.gethostname() and not _pid_alive(owner.pid)

    def _create(self, payload: bytes) -> None:
        """Create the lock file whole, or raise FileExistsError."""
        self.fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        if not is_local(self.fs):
            with self.fs.open(self.path, "xb") as f:
                f.write(payload)
            return
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)  # atomic, and fails with FileExistsError when held
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)

    @contextlib.contextmanager
    def _takeover_guard(self) -> Iterator[None]:
        """Serialize takeovers of one lock (local: flock on its folder; object stores: none)."""
        if not is_local(self.fs):
            yield
            return

        fd = os.open(posixpath.dirname(self.path), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _take_over(self, stale: LockOwner, payload: bytes) -> bool:
        """Replace the stale lock `stale` with ours; False if it changed meanwhile (someone else
        took it over, or it was released)."""
        with self._takeover_guard():
            if self.read_owner() != stale:
                return False
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self.path)
            try:
                self._create(payload)
            except FileExistsError:
                return False  # a fresh writer created it between our rm and create
        return True

    def acquire(self) -> LockOwner:
        """Take the lock or raise `self.error`; recover a stale or damaged lock with a warning."""
        me = LockOwner(
            host=socket.gethostname(),
            pid=os.getpid(),
            start_time=time.time(),
            command=" ".join(sys.argv) or "python",
            token=uuid.uuid4().hex,
        )
        mine = asdict(me)
        del mine["problem"]
        payload = json.dumps(mine, indent=2).encode()
        for _ in range(5):
            try:
                self._create(payload)
                self.owner = me
                return me
            except FileExistsError:
                pass
            owner = self.read_owner()
            if owner is None:
                continue  # released between our two calls: try again
            if not self._is_stale(owner):
                raise self.error(
                    f"{self.path} is locked by a running writer ({owner.describe()}); wait for it "
                    "to finish, or if that job is gone (another host), delete the lock file"
                ) from None
            if self._take_over(owner, payload):
                why = (
                    owner.describe()
                    if owner.problem
                    else f"left by a dead writer ({owner.describe()})"
                )
                warnings.warn(
                    f"recovered stale {self.what} lock {self.path} {why}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.owner = me
                return me
        raise self.error(f"could not take the lock {self.path}: it keeps changing owner")

    def release(self) -> None:
        """Remove the lock if we still own it (a lock someone else recovered is left alone)."""
        if self.owner is None:
            return
        current = self.read_owner()
        if current is not None and current.token == self.owner.token:
            self.fs.rm(self.path)
        self.owner = None
