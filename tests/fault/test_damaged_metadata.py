"""Damaged metadata is reported, never a crash (issue #16, items 6, 7 and the store/eval parts of 9).

Each damage is done to the files on disk (zarr.json, a marker) the way a crashed tool, a bad disk or
a hostile user leaves them. `lplkit verify` exits 4 naming the problem; `lplkit train` and `lplkit info`
refuse the store in one line (exit 4) instead of an internal error (exit 70) or a hang.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers.cli import run_cli, subprocess_env

COUNT, SHARD = 16, 8


@pytest.fixture
def store(damageable_store, tmp_path) -> Path:
    return damageable_store(
        tmp_path / "s.zarr",
        count=COUNT,
        shard_size=SHARD,
        chunk_size=4,
        num_classes=3,
        autoencoder={"id": "synthetic", "scaling_factor": 0.5},
    )


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    code, out, err = run_cli(args, capsys)
    return code, out, " ".join(err.split())


def _train_args(store: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--store", str(store), "--out", str(run), "--model", "DiT-T/2", "--steps", "2",
            "--batch-size", "4", "--device", "cpu", *extra]  # fmt: skip


def _edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _nested_manifest(store: Path) -> None:
    depth = 200_000
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": '
                                     '{"lplkit": ' + "[" * depth + "]" * depth + "}}")  # fmt: skip


def _cut_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _set(store: Path, key: str, value) -> None:
    def edit(doc):
        target = doc["attributes"]["lplkit"]
        *parents, last = key.split(".")
        for p in parents:
            target = target[p]
        target[last] = value

    _edit_json(store / "zarr.json", edit)


def _manifest_list(store: Path) -> None:
    _edit_json(store / "zarr.json", lambda d: d["attributes"].__setitem__("lplkit", [1, 2, 3]))


def _marker_many(store: Path) -> None:
    _edit_json(store / "progress" / "shard-00001.json", lambda d: d.__setitem__("n_ok", "many"))


def _big_endian(store: Path) -> None:
    def edit(doc):
        doc["codecs"][0]["configuration"]["codecs"][0]["configuration"]["endian"] = "big"

    _edit_json(store / "moments" / "zarr.json", edit)


# damage -> (verify problem kind, text in verify's message, text in train's/info's one line)
DAMAGES = {
    "nested_manifest": (_nested_manifest, "manifest", "nested too deeply", "damaged"),
    "root_zarr_json_cut": (
        lambda s: _cut_half(s / "zarr.json"),
        "manifest",
        "not valid JSON",
        "damaged",
    ),
    "array_zarr_json_cut": (
        lambda s: _cut_half(s / "moments" / "zarr.json"),
        "array",
        "unreadable metadata",
        "unreadable metadata",
    ),
    "manifest_is_a_list": (_manifest_list, "manifest", "not a JSON object", "not a JSON object"),
    "marker_n_ok_many": (_marker_many, "marker", "n_ok 'many' is not a count", "n_ok 'many'"),
    "count_1e30": (
        lambda s: _set(s, "source.count", 1e30),
        "manifest",
        "source.count",
        "source.count",
    ),
    "count_10_pow_30": (
        lambda s: _set(s, "source.count", 10**30),
        "manifest",
        "source.count",
        "source.count",
    ),
    "scaling_factor_nan": (
        lambda s: _set(s, "autoencoder.scaling_factor", float("nan")),
        "manifest",
        "scaling_factor nan is not a finite number",
        "scaling_factor nan",
    ),
    "scaling_factor_zero": (
        lambda s: _set(s, "autoencoder.scaling_factor", 0.0),
        "manifest",
        "scaling_factor is 0",
        "scaling_factor is 0",
    ),
    "moments_big_endian": (_big_endian, "array", "endian 'big'", "endian 'big'"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_verify_names_the_damage_and_train_refuses_it(damage, store, tmp_path, capsys):
    edit, kind, verify_text, train_text = DAMAGES[damage]
    edit(store)
    code, out, err = _cli(["verify", str(store), "--json"], capsys)
    assert code == 4, err
    problems = json.loads(out)["problems"]
    assert any(p["kind"] == kind and verify_text in p["message"] for p in problems), problems

    code, _, err = _cli(_train_args(store, tmp_path / "run"), capsys)
    assert code == 4 and train_text in err and "internal error" not in err, err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("damage", ["manifest_is_a_list", "count_1e30", "count_10_pow_30",
                                    "nested_manifest", "array_zarr_json_cut"])  # fmt: skip
def test_info_refuses_damaged_metadata_in_one_line(damage, store):
    """In a subprocess with a timeout: before the fix, count = 1e30 made `info` run for 20+ min."""
    edit, _, _, text = DAMAGES[damage]
    edit(store)
    done = subprocess.run([sys.executable, "-m", "lplkit", "info", str(store)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    err = " ".join(done.stderr.split())
    assert done.returncode == 4 and text in err and "internal error" not in err, err


def test_a_run_that_skips_every_step_stops_with_an_error(store, tmp_path, capsys):
    """NaN in every stored latent (invisible to the quick start check, which reads no data):
    every step is skipped as non-finite. Before the fix, train exited 0."""
    arr = zarr.open_group(str(store), mode="r+")["moments"]
    arr[:] = np.full(arr.shape, np.nan, dtype=arr.dtype)
    run = tmp_path / "run"
    code, _, err = _cli(_train_args(store, run, "--steps", "10", "--log-every", "5"), capsys)
    assert code == 8, err
    assert "every step of 6..10 was skipped" in err, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["nan_skips"]) for r in rows] == [(5, 5), (10, 10)]


def test_eval_on_an_object_npz_is_one_line(tmp_path, capsys):
    samples = tmp_path / "samples.npz"
    np.savez(samples, arr_0=np.array([{"a": 1}, None], dtype=object))
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    code, _, err = _cli(["eval", "--samples", str(samples), "--ref", str(ref)], capsys)
    assert code == 7 and "not a readable .npz of numeric arrays" in err, err
    assert "internal error" not in err
