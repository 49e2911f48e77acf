"""Store damage: `lplkit verify` names each problem (non-zero exit) and `lplkit train` refuses the store
with a one-line message naming the problem and the fix, before any training step.

Damage is done to the files on disk the way a disk, a user or a crashed tool would: a deleted zarr shard
file, flipped bytes in one, NaN written into moments, a truncated index.parquet, a hand-edited manifest
(zarr.json), a deleted completion marker. The train start check is structural (cheap); content damage
that needs reading every byte (flipped bytes, NaN) is refused with `--verify-store`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers.cli import run_cli

from lplkit.store.synthetic import write_synthetic_store

COUNT, SHARD = 48, 16  # shards 0, 1, 2
SHARD_FILE = Path("moments/c/1/0/0/0/0")  # zarr v3 key of shard 1 of `moments`


@pytest.fixture
def store(damageable_store, tmp_path) -> Path:
    return damageable_store(
        tmp_path / "s.zarr", count=COUNT, shard_size=SHARD, chunk_size=4, num_classes=3
    )


def _verify(store: Path, capsys) -> tuple[int, set[tuple[str, int | None]], list[dict]]:
    code, out, _ = run_cli(["verify", str(store), "--json"], capsys)
    report = json.loads(out)
    return code, {(p["kind"], p["shard"]) for p in report["problems"]}, report["problems"]


def _train(store: Path, tmp_path: Path, capsys, *extra: str) -> tuple[int, str]:
    args = ["train", "--store", str(store), "--out", str(tmp_path / "run"), "--model", "DiT-T/2",
            "--steps", "1", "--batch-size", "4", "--device", "cpu", *extra]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    return code, " ".join(err.split())  # rich wraps long lines on stderr


def _edit_manifest(store: Path, edit) -> None:
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    edit(meta["attributes"]["lplkit"])
    meta_path.write_text(json.dumps(meta))


def test_pristine_store_verifies_and_trains(store, tmp_path, capsys):
    code, kinds, _ = _verify(store, capsys)
    assert (code, kinds) == (0, set())
    code, err = _train(store, tmp_path, capsys, "--verify-store")
    assert code == 0, err
    assert (tmp_path / "run" / "checkpoints" / "step_00000001").is_dir()


def test_deleted_shard_file(store, tmp_path, capsys):
    (store / SHARD_FILE).unlink()
    code, kinds, _ = _verify(store, capsys)
    assert code == 4 and ("missing_data", 1) in kinds and ("checksum", 1) in kinds
    code, err = _train(store, tmp_path, capsys)  # the quick check is enough
    assert code == 4
    assert "shard 1" in err and "moments/c/1/0/0/0/0" in err and "--repair" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_flipped_bytes_in_a_shard_file(store, tmp_path, capsys):
    path = store / SHARD_FILE
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # inside the first chunk's fp16 payload (codec none: no decode error)
    path.write_bytes(bytes(data))
    code, kinds, problems = _verify(store, capsys)
    assert code == 4 and kinds == {("checksum", 1)}
    assert "sha256" in problems[0]["message"] and "re-encode shard 1" in problems[0]["fix"]
    code, err = _train(store, tmp_path, capsys, "--verify-store")
    assert code == 4 and "shard 1" in err and "sha256" in err and "re-encode shard 1" in err


def test_nan_written_into_moments(store, tmp_path, capsys):
    arr = zarr.open_group(str(store), mode="r+")["moments"]
    block = arr[32:48]
    block[5, 0, 1, 2, 3] = np.nan
    arr[32:48] = block  # whole shard rewritten, like a buggy tool would
    code, kinds, problems = _verify(store, capsys)
    assert code == 4 and ("nonfinite", 2) in kinds and ("checksum", 2) in kinds
    assert any("NaN/Inf at positions [37]" in p["message"] for p in problems)
    code, err = _train(store, tmp_path, capsys, "--verify-store")
    assert code == 4 and "shard 2" in err and "re-encode shard 2" in err


def test_truncated_index(store, tmp_path, capsys):
    path = store / "index.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, kinds, problems = _verify(store, capsys)
    assert code == 4 and kinds == {("index", None)}
    assert "truncated" in problems[0]["message"] and "--repair" in problems[0]["fix"]
    code, err = _train(store, tmp_path, capsys)
    assert code == 4 and "index.parquet is unreadable" in err and "--repair" in err


def test_deleted_completion_marker(store, tmp_path, capsys):
    (store / "progress" / "shard-00002.json").unlink()
    code, kinds, _ = _verify(store, capsys)
    assert code == 4 and kinds == {("missing_shard", 2)}
    code, err = _train(store, tmp_path, capsys)
    assert code == 4 and "shard 2" in err and "completion marker" in err and "lplkit encode" in err


EDITS = {
    "latent_shape": (lambda m: m.update(latent_shape=[4, 4, 4]), "count", "manifest says"),
    "dtype": (lambda m: m.update(dtype="bfloat16"), "array", "stored as float16"),
    "counts": (lambda m: m["counts"].update(ok=47), "count", "ok samples disagree"),
    "shard_size": (lambda m: m.update(shard_size=8, chunk_size=4), "missing_shard", "marker"),
    "source.count": (lambda m: m["source"].update(count=40), "count", "manifest says"),
    "missing field": (lambda m: m.pop("flips"), "manifest", "'flips' is missing"),
    "wrong type": (lambda m: m.update(resolution="64"), "manifest", "'resolution' has the wrong"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_manifest(store, tmp_path, capsys, edit):
    change, kind, words = EDITS[edit]
    _edit_manifest(store, change)
    code, kinds, problems = _verify(store, capsys)
    assert code == 4 and kind in {k for k, _ in kinds}, problems
    assert any(words in p["message"] for p in problems), problems
    code, err = _train(store, tmp_path, capsys)
    assert code == 4 and err.startswith("error:") and words in err, err


@pytest.mark.parametrize("damage", ["truncated", "shard_index_flipped"])
def test_repair_then_rerun_rewrites_a_damaged_shard_file(store, tmp_path, capsys, damage):
    """zarr merges a shard write into the existing file; a damaged file must not block the re-run."""
    path = store / SHARD_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0xFF  # the shard's chunk index (crc32c-protected) at the end of the file
    path.write_bytes(bytes(data))
    code, kinds, _ = _verify(store, capsys)
    assert code == 4 and ("unreadable", 1) in kinds
    code, _, err = run_cli(["verify", str(store), "--repair"], capsys)
    assert code == 4 and "re-run the encode command" in " ".join(err.split())
    # the same writer call as the fixture's = re-running the encode command
    write_synthetic_store(store, count=COUNT, shard_size=SHARD, chunk_size=4, num_classes=3)
    code, kinds, _ = _verify(store, capsys)
    assert (code, kinds) == (0, set())
    code, err = _train(store, tmp_path, capsys)
    assert code == 0, err
