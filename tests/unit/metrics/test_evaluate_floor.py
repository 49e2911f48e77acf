"""`evaluate(..., floor=HELD_OUT)` / `lplkit eval --floor`: held-out real images vs the references."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.cli import run_cli

from lplkit.metrics.evaluate import EvalOptions, evaluate
from lplkit.metrics.swd import SWDConfig


def _npz(path, n: int, seed: int, size: int = 32):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, (1, size, size, 3))
    noise = rng.integers(0, 56, (n, size, size, 3))
    np.savez(path, (base + noise).astype(np.uint8))
    return str(path)


@pytest.fixture
def sets(tmp_path):
    return (
        _npz(tmp_path / "samples.npz", 12, 1),
        _npz(tmp_path / "ref.npz", 20, 2),
        _npz(tmp_path / "heldout.npz", 16, 3),
    )


def _opts(n=None) -> EvalOptions:
    return EvalOptions(
        metrics=("swd", "spectrum"), n=n, swd=SWDConfig(dirs_per_repeat=32, dir_repeats=2)
    )


def test_floor_is_the_held_out_set_against_the_references_at_the_samples_size(sets, tmp_path):
    samples, ref, heldout = sets
    res = evaluate(samples, ref, _opts(), floor=heldout)
    # the floor compares as many held-out images as there are samples (12 of 16), all references
    assert res["samples"]["n"] == res["floor"]["n"] == 12 and res["ref"]["n"] == 20
    pick = np.sort(np.random.default_rng(0).choice(16, size=12, replace=False))  # seed 0 subset
    np.savez(tmp_path / "subset.npz", np.load(heldout)["arr_0"][pick])
    direct = evaluate(str(tmp_path / "subset.npz"), ref, _opts())  # a plain call on that subset
    assert res["floor"]["swd"] == direct["swd"]
    assert res["floor"]["spectrum"] == direct["spectrum"]
    for level, ratio in res["vs_floor"].items():
        assert ratio == pytest.approx(res["swd"]["levels"][level] / direct["swd"]["levels"][level])


def test_held_out_set_as_samples_is_exactly_at_the_floor(sets):
    _, ref, heldout = sets
    res = evaluate(heldout, ref, _opts(), floor=heldout)
    assert all(r == pytest.approx(1.0) for r in res["vs_floor"].values())


def test_eval_cli_floor_json_and_table(sets, capsys):
    samples, ref, heldout = sets
    args = ["eval", "--samples", samples, "--ref", ref, "--floor", heldout, "--swd-dirs", "32",
            "--swd-repeats", "2"]  # fmt: skip
    code, out, _ = run_cli([*args, "--json"], capsys)
    assert code == 0
    res = json.loads(out)
    assert set(res["vs_floor"]) == set(res["swd"]["levels"])
    code, out, err = run_cli(args, capsys)
    assert code == 0 and "/ floor" in out + err and "held-out" in out + err
