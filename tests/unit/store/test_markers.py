"""Completion markers are scanned once per command: one listing of progress/, each marker read once.

The counts come from wrapping fsspec's LocalFileSystem (every marker read and every listing goes
through it), not from lplkit's own bookkeeping.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem
from helpers.cli import run_cli
from helpers.images import write_image_folder

from lplkit.store.markers import MARKER_LIMIT, scan_markers
from lplkit.store.synthetic import write_synthetic_store


@pytest.fixture
def fs_calls(monkeypatch) -> collections.Counter:
    """Counts `ls` of progress/ ("listings") and opens of each marker file ("open <name>")."""
    calls: collections.Counter = collections.Counter()
    ls, open_ = LocalFileSystem.ls, LocalFileSystem._open

    def counting_ls(self, path, *args, **kwargs):
        if str(path).rstrip("/").endswith("/progress"):
            calls["listings"] += 1
        return ls(self, path, *args, **kwargs)

    def counting_open(self, path, mode="rb", *args, **kwargs):
        if "/progress/shard-" in str(path) and "r" in mode:
            calls["open " + str(path).rsplit("/", 1)[-1]] += 1
        return open_(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "ls", counting_ls)
    monkeypatch.setattr(LocalFileSystem, "_open", counting_open)
    return calls


def _opens(calls: collections.Counter) -> dict[str, int]:
    return {k: v for k, v in calls.items() if k.startswith("open ")}


def test_encode_resume_lists_progress_once_and_reads_each_marker_once(
    tmp_path, tiny_vae_dir, fs_calls
):
    images = write_image_folder(tmp_path / "images", {"a": 6, "b": 6})  # 12 images: 6 shards
    out = tmp_path / "s.zarr"
    args = ["encode", "--dataset", str(images), "--res", "16", "--vae", str(tiny_vae_dir),
            "--out", str(out), "--shard-size", "2", "--batch-size", "4", "--workers", "0",
            "--device", "cpu"]  # fmt: skip
    assert run_cli(args)[0] == 0
    for s in (1, 4):  # an interrupted encode: two shards pending
        (out / "progress" / f"shard-0000{s}.json").unlink()
    group = json.loads((out / "zarr.json").read_text())
    group["attributes"]["lplkit"]["completed"] = False
    (out / "zarr.json").write_text(json.dumps(group))
    fs_calls.clear()
    assert run_cli(args)[0] == 0  # the resume: writes shards 1 and 4, then finalizes
    assert fs_calls["listings"] == 1
    # the four markers found are read once each; the two rewritten ones are never read back
    assert _opens(fs_calls) == {f"open shard-0000{s}.json": 1 for s in (0, 2, 3, 5)}
    assert len(list((out / "progress").glob("shard-*.json"))) == 6


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "s.zarr"
    write_synthetic_store(path, count=40, shard_size=8, chunk_size=4)  # 5 shards
    return path


def _verify(url: str) -> None:
    from lplkit.store.verify import verify_store

    assert verify_store(url).ok


def _info(url: str) -> None:
    from lplkit.store.inspect import store_info

    assert store_info(url)["shards"]["complete"] == 5


def _content_hash(url: str) -> None:
    from lplkit.stats.storage import store_content_hash
    from lplkit.store import format as fmt

    store_content_hash(url, fmt.read_manifest(url))


def _open_unfinished(url: str) -> None:
    from lplkit.store import LatentStore

    assert len(LatentStore.open(url, allow_incomplete=True).ok_positions) == 40


@pytest.mark.parametrize("command", [_verify, _info, _content_hash, _open_unfinished])
def test_each_command_lists_progress_once_and_reads_each_marker_once(store, fs_calls, command):
    if command is _open_unfinished:
        group = json.loads((store / "zarr.json").read_text())
        group["attributes"]["lplkit"]["completed"] = False
        (store / "zarr.json").write_text(json.dumps(group))
    fs_calls.clear()
    command(str(store))
    assert fs_calls["listings"] == 1
    assert _opens(fs_calls) == {f"open shard-0000{s}.json": 1 for s in range(5)}


def test_damaged_and_oversized_markers_are_problems_and_big_ones_are_not_read(store, fs_calls):
    from fsspec.implementations.local import LocalFileSystem as Local

    (store / "progress" / "shard-00001.json").write_text("{not json")
    (store / "progress" / "shard-00002.json").write_bytes(b" " * (MARKER_LIMIT + 1))
    marker3 = json.loads((store / "progress" / "shard-00003.json").read_text())
    (store / "progress" / "shard-00003.json").write_text(json.dumps(dict(marker3, shard=4)))
    fs_calls.clear()
    scan = scan_markers(Local(), str(store), 40, 8)
    assert sorted(scan.markers) == [0, 4]
    assert sorted(scan.problems) == [1, 2, 3]
    assert "not valid JSON" in scan.problems[1] and "larger than" in scan.problems[2]
    assert "another shard" in scan.problems[3]
    assert "open shard-00002.json" not in fs_calls  # judged from the listing's size
    assert scan.pending() == [1, 2, 3]


def test_a_later_scan_reads_only_markers_it_has_not_seen(store, fs_calls):
    (store / "progress" / "shard-00004.json").rename(store / "aside.json")
    first = scan_markers(LocalFileSystem(), str(store), 40, 8)
    assert first.pending() == [4]
    (store / "aside.json").rename(store / "progress" / "shard-00004.json")  # another rank wrote it
    fs_calls.clear()
    second = scan_markers(LocalFileSystem(), str(store), 40, 8, known=first)
    assert second.pending() == [] and fs_calls["listings"] == 1
    assert _opens(fs_calls) == {"open shard-00004.json": 1}
