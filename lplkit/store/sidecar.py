"""Files next to the zarr arrays (markers, index parts, index, lock) through fsspec.

Every store URL (`/local/path`, `file://`, `memory://`, `s3://`) resolves with `fsspec.core.url_to_fs`,
so sidecars behave the same wherever the zarr arrays live.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec


def url_to_fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, root path) of a store URL (local paths made absolute)."""
    fs, root = fsspec.core.url_to_fs(str(url))
    return fs, root.rstrip("/") or "/"


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


@contextlib.contextmanager
def open_atomic(fs: Any, path: str) -> Iterator[IO[bytes]]:
    """A binary file to write `path` through, so that readers see the old file or the whole new
    one, never a partial one; on an exception inside the block the old file stays.

    Local: a temp file in the same directory, fsynced, then `os.replace`d over `path`. Object
    stores (s3) make an upload visible atomically when the file closes, so a direct write already
    has that property; an exception inside the block discards the upload instead of closing it.
    """
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    if not is_local(fs):
        f = fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            discard = getattr(f, "discard", None)  # s3fs: abort the multipart upload
            if callable(discard):
                with contextlib.suppress(Exception):
                    discard()
            raise
        f.close()
        return
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk must not also keep the partial temp file
            os.remove(tmp)
        raise


def write_bytes_atomic(fs: Any, path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one (`open_atomic`)."""
    with open_atomic(fs, path) as f:
        f.write(data)


def read_json(fs: Any, path: str) -> Any:
    """Parsed JSON at `path` (FileNotFoundError / ValueError propagate to the caller)."""
    with fs.open(path, "rb") as f:
        return json.loads(f.read().decode())


def write_json_atomic(fs: Any, path: str, data: Any) -> None:
    write_bytes_atomic(fs, path, json.dumps(data, indent=2, sort_keys=True).encode())


def remove_if_exists(fs: Any, path: str) -> bool:
    """Delete `path`; True if it existed."""
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        return False
    return True
