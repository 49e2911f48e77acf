"""Disk full / I/O errors while a shard is written: one clear error line (names the store and the shard
and says what to do), the failed shard is never marked complete, nothing half-written is trusted, the
lock is released, and re-running the same command completes a store equal to an uninterrupted one.

Faults are injected at the storage boundary (zarr's LocalStore, fsspec's LocalFileSystem, the
os.replace that publishes a marker / the index), as ENOSPC/EIO `OSError`s.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import fsspec.implementations.local
import pytest
import zarr
from helpers.cli import run_cli
from helpers.images import write_image_folder
from helpers.stores import read_store

import lplkit.store.sidecar

ARRAYS = ("moments", "labels")

# Recovering from a killed/damaged writer is the point here: lplkit's recovery notice is expected
# (shown, as users see it; not an error).
pytestmark = pytest.mark.filterwarnings("default:recovered stale:RuntimeWarning")


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _args(images: Path, out: Path, vae: Path) -> list[str]:
    return ["encode", "--dataset", str(images), "--res", "16", "--vae", str(vae), "--out", str(out),
            "--shard-size", "4", "--batch-size", "3", "--workers", "0", "--device", "cpu"]  # fmt: skip


def _main(args: list[str], capsys) -> tuple[int, str]:
    code, _, err = run_cli(args, capsys)
    return code, " ".join(err.split())


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(
        tmp_path_factory.mktemp("df") / "images", {"a": 5, "b": 5}
    )  # 3 shards


@pytest.fixture(scope="module")
def reference(images, tiny_vae_dir, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert run_cli(_args(images, out, tiny_vae_dir))[0] == 0
    return read_store(out)


def _fail_zarr_set(monkeypatch, partial: bool) -> None:
    """ENOSPC when zarr stores shard 1 of `moments`; `partial`: after writing half the bytes."""
    original = zarr.storage.LocalStore.set

    async def set_(self, key, value):
        if key.startswith("moments/c/1/"):
            if partial:
                path = Path(self.root) / key
                path.parent.mkdir(parents=True, exist_ok=True)
                data = value.to_bytes()
                path.write_bytes(data[: len(data) // 2])
            raise _enospc()
        return await original(self, key, value)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", set_)


def _fail_index_part(monkeypatch) -> None:
    original = fsspec.implementations.local.LocalFileSystem.pipe_file

    def pipe_file(self, path, value, *args, **kwargs):
        if str(path).endswith("shard-00001.parquet"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return original(self, path, value, *args, **kwargs)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "pipe_file", pipe_file)


def _fail_replace(monkeypatch, name: str) -> None:
    """ENOSPC when publishing `name` (the temp file is already written: a full disk at fsync)."""
    original = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(name):
            raise _enospc()
        return original(src, dst, *args, **kwargs)

    monkeypatch.setattr(lplkit.store.sidecar.os, "replace", replace)


FAULTS = {
    "zarr_enospc": (lambda mp: _fail_zarr_set(mp, partial=False), "writing shard 1"),
    "zarr_half_written": (lambda mp: _fail_zarr_set(mp, partial=True), "writing shard 1"),
    "index_part_eio": (_fail_index_part, "writing shard 1"),
    "marker_enospc": (lambda mp: _fail_replace(mp, "shard-00001.json"), "writing shard 1"),
    "finalize_enospc": (lambda mp: _fail_replace(mp, "index.parquet"), "finalizing"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_write_error_is_clear_and_resumable(
    fault, images, tiny_vae_dir, reference, tmp_path, capsys, monkeypatch
):
    inject, words = FAULTS[fault]
    out = tmp_path / "s.zarr"
    with monkeypatch.context() as mp:
        inject(mp)
        code, err = _main(_args(images, out, tiny_vae_dir), capsys)
    assert code == 4, err  # StoreError
    # one error line; before it only the plain progress lines of a non-terminal stderr ("encode: ...")
    before, sep, _ = err.partition("error:")
    assert sep and (not before or before.startswith("encode:")) and err.count("error:") == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert words in err and str(out) in err and "re-run the same command" in err, err
    assert ("No space left on device" in err) or ("Input/output error" in err), err
    markers = {p.name for p in (out / "progress").glob("*.json")}
    if fault != "finalize_enospc":
        assert "shard-00001.json" not in markers  # never marked complete
    assert "shard-00000.json" in markers  # work before the fault is kept
    assert not list(out.rglob("*.tmp-*")), "a temp file was left behind"
    assert not (out / "index.parquet").exists()
    assert not (out / ".lplkit-lock.json").exists()  # the lock was released

    from lplkit.store.verify import verify_store

    assert not verify_store(str(out)).ok
    code, err = _main(_args(images, out, tiny_vae_dir), capsys)  # the disk has space again
    assert code == 0, err
    got = read_store(out)
    for name in ARRAYS:
        assert got[name].tobytes() == reference[name].tobytes(), name
    assert got["index"] == reference["index"]
    assert got["manifest"]["counts"] == reference["manifest"]["counts"]
    assert verify_store(str(out)).ok
