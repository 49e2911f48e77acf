"""`lplkit info` and `lplkit verify`: --json output, exit codes, --repair."""

from __future__ import annotations

import json

import pytest
from helpers.cli import run_cli

from lplkit.errors import StoreCorruptError
from lplkit.store.synthetic import write_synthetic_store


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "s.zarr"
    write_synthetic_store(
        path, count=40, latent_shape=(4, 8, 8), shard_size=16, chunk_size=4, skipped=[2, 3]
    )
    return path


def test_info_json_counts_and_sizes(store, capsys):
    code, out, _ = run_cli(["info", str(store), "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["counts"] == {"total": 40, "ok": 38, "skipped": 2}
    moments = info["arrays"]["moments"]
    assert moments["shape"] == [40, 2, 4, 8, 8]
    assert moments["logical_bytes"] == 40 * 2 * 4 * 8 * 8 * 2  # float16
    on_disk = sum(f.stat().st_size for f in (store / "moments").rglob("*") if f.is_file())
    assert moments["stored_bytes"] == on_disk
    assert moments["compression_ratio"] == pytest.approx(
        moments["logical_bytes"] / on_disk, rel=1e-3
    )
    assert info["manifest"]["autoencoder"]["id"] == "synthetic"


def test_info_human_output_goes_to_stderr(store, capsys):
    code, out, err = run_cli(["info", str(store)], capsys)
    assert code == 0 and out == "" and "float16" in err


@pytest.mark.parametrize("damaged", [None, 0, 1, 2])
def test_verify_ok_exits_zero(store, capsys, damaged):
    """`ok` and exit 0 exactly when the store is intact: the same store with one flipped byte in
    any one of its 3 shards is reported (a verify that always says ok fails here)."""
    if damaged is not None:
        shard = store / "moments" / "c" / str(damaged) / "0" / "0" / "0" / "0"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    code, out, _ = run_cli(["verify", str(store), "--json"], capsys)
    report = json.loads(out)
    assert (report["n_shards"], report["complete_shards"]) == (3, 3)
    if damaged is None:
        assert code == 0 and report["ok"] is True and report["problems"] == []
    else:
        assert code == StoreCorruptError.exit_code and report["ok"] is False
        assert report["bad_shards"] == [damaged]


def test_verify_corrupt_exits_nonzero_and_repair_removes_markers(store, capsys):
    shard = store / "moments" / "c" / "1" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[64] ^= 0x10
    shard.write_bytes(bytes(data))
    code, out, err = run_cli(["verify", str(store), "--json"], capsys)
    assert code == StoreCorruptError.exit_code
    report = json.loads(out)
    assert report["bad_shards"] == [1] and report["problems"][0]["kind"] == "checksum"
    assert "problem" in err and "Traceback" not in err
    code, out, err = run_cli(["verify", str(store), "--repair"], capsys)
    assert code == StoreCorruptError.exit_code and "re-run" in err
    assert not (store / "progress" / "shard-00001.json").exists()
    assert (store / "progress" / "shard-00000.json").exists()


@pytest.mark.parametrize("options", [["--workers", "2"], ["--sample", "1.0"]])
def test_verify_workers_and_whole_sample_find_a_flipped_byte(store, capsys, options):
    shard = store / "moments" / "c" / "2" / "0" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[64] ^= 0x10
    shard.write_bytes(bytes(data))
    code, out, _ = run_cli(["verify", str(store), "--json", *options], capsys)
    report = json.loads(out)
    assert code == StoreCorruptError.exit_code and report["bad_shards"] == [2]
    sample = report["sample"]
    assert sample is None if "--workers" in options else sample["checked"] == [0, 1, 2]


def test_verify_sample_says_it_was_a_sample(store, capsys):
    code, _, err = run_cli(["verify", str(store), "--sample", "0.5", "--seed", "7"], capsys)
    assert code == 0
    text = " ".join(err.split())
    assert "sample: the data of 2 of 3 complete shards was read (--sample 0.5 --seed 7" in text
    assert "not found by a sample" in text and "the sampled shards' checksums match" in text


@pytest.mark.parametrize(
    "option", [["--workers", "0"], ["--sample", "0"], ["--sample", "1.5"], ["--seed", "-1"]]
)
def test_verify_out_of_range_options_are_usage_errors(store, capsys, option):
    code, _, err = run_cli(["verify", str(store), *option], capsys)
    assert code == 2 and option[0] in err


def test_verify_missing_store(tmp_path, capsys):
    code, _, err = run_cli(["verify", str(tmp_path / "nope.zarr")], capsys)
    assert code == StoreCorruptError.exit_code and "nope.zarr" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["info", "{p}"],
        ["stats", "{p}"],
        ["train", "--store", "{p}", "--out", "{run}", "--steps", "1"],
    ],
    ids=["info", "stats", "train"],
)
def test_a_mistyped_store_path_is_not_found_not_damaged(tmp_path, capsys, argv):
    """A path where nothing exists is "not found" (train called it a damaged store, info "not an
    lplkit latent store"), and nothing is created for it."""
    path, run = tmp_path / "typo.zarr", tmp_path / "run"
    code, _, err = run_cli([a.format(p=path, run=run) for a in argv], capsys)
    assert code == StoreCorruptError.exit_code
    assert f"no latent store at {path}: the path does not exist" in err
    assert "damaged" not in err and "not an lplkit latent store" not in err
    assert not path.exists() and not run.exists()
