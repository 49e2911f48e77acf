"""`lplkit encode --out DIR` never deletes what lplkit did not write (issue #16, item 1).

An `--out` that exists and is neither an lplkit store nor an empty directory (nor the half-created
store an encode killed during creation leaves) is refused with one line before anything is written:
every file in it keeps its bytes and no file is added (not even the lock).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.stores import read_store

# Recovering from a killed/damaged writer is the point here: lplkit's recovery notice is expected
# (shown, as users see it; not an error).
pytestmark = pytest.mark.filterwarnings("default:recovered stale:RuntimeWarning")


def _args(images: Path, out: Path, vae: Path) -> list[str]:
    return ["encode", "--dataset", str(images), "--res", "16", "--vae", str(vae), "--out", str(out),
            "--shard-size", "4", "--batch-size", "4", "--workers", "0", "--device", "cpu"]  # fmt: skip


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes), dot files included."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


FOREIGN_GROUP = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}).encode()
USER_FILES = {
    "moments/thesis.tex": b"\\documentclass{article} my thesis",
    "labels/data.csv": b"a,b\n1,2\n",
    "index.parquet": b"not lplkit's index",
}


@pytest.mark.parametrize(
    "files",
    [
        USER_FILES,
        {"notes.txt": b"hello"},  # any non-empty folder
        # A zarr group that is not an lplkit store, with an array named like lplkit's.
        {"zarr.json": FOREIGN_GROUP, "moments/zarr.json": b"{}", "moments/c/0/0": b"user chunk"},
    ],
    ids=["user-files", "one-file", "foreign-zarr-group"],
)
def test_encode_refuses_a_folder_it_did_not_write(
    files, image_folder, tiny_vae_dir, tmp_path, capsys
):
    out = tmp_path / "mine"
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    before = _snapshot(out)
    code, _, err = run_cli(_args(image_folder, out, tiny_vae_dir), capsys)
    err = " ".join(err.split())
    assert code == 4, err
    assert "not an lplkit store" in err and str(out) in err and "internal error" not in err
    assert _snapshot(out) == before  # nothing deleted, changed or added (no lock file)


def test_encode_into_an_empty_folder_or_a_regular_file(
    image_folder, tiny_vae_dir, tmp_path, capsys
):
    out = tmp_path / "empty"
    out.mkdir()
    code, _, err = run_cli(_args(image_folder, out, tiny_vae_dir), capsys)
    assert code == 0, err
    assert len(read_store(out)["index"]) == 12

    a_file = tmp_path / "file.zarr"
    a_file.write_bytes(b"data")
    code, _, err = run_cli(_args(image_folder, a_file, tiny_vae_dir), capsys)
    assert code == 4 and "is a file" in " ".join(err.split())
    assert a_file.read_bytes() == b"data"


def test_half_created_store_is_resumed(image_folder, tiny_vae_dir, tmp_path, capsys):
    """An encode killed while creating the arrays (before the manifest) leaves a zarr group with
    lplkit's array metadata only: the re-run creates the store over it."""
    import zarr

    out = tmp_path / "half.zarr"
    group = zarr.open_group(str(out), mode="w")
    group.create_array("moments", shape=(12, 2, 4, 4, 4), dtype="float16", chunks=(4, 2, 4, 4, 4))
    (out / ".lplkit-lock.json").write_text(json.dumps({
        "host": "elsewhere-" + os.uname().nodename, "pid": -1, "start_time": 0.0,
        "command": "lplkit encode (killed)", "token": "x"}))  # fmt: skip
    code, _, err = run_cli(_args(image_folder, out, tiny_vae_dir), capsys)
    assert code == 0, err
    assert read_store(out)["manifest"]["completed"]
