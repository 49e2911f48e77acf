"""`lplkit stats` command: --json validates against schemas/stats.schema.json; errors are one line."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from helpers.stores import write_stats_store

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "stats.schema.json"


def _run(args: list[str]) -> int:
    return run_cli(args)[0]


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory, tiny_vae_dir) -> Path:
    url = tmp_path_factory.mktemp("stats_cli") / "latents.zarr"
    write_stats_store(url, tiny_vae_dir)
    return url


def test_stats_json_validates_against_schema(cli_store, capsys) -> None:
    code = _run(["stats", str(cli_store), "--samples", "8", "--depth", "2", "--batch-size", "3",
                 "--device", "cpu", "--bins", "256", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(result, schema)
    assert [layer["name"] for layer in result["layers"]] == [
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
    ]
    assert result["sampling"]["items"] == 8 and result["quantiles"]["bins"] == 256
    assert result["run"].startswith("run-")
    # The schema is not vacuous: a summary lacking the layers' outlier share is rejected.
    del result["layers"][0]["outlier_share"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(result, schema)


def test_stats_table_and_latents_only(cli_store, capsys) -> None:
    code = _run(["stats", str(cli_store), "--samples", "0", "--latents-only", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "scaling_factor" in captured.err and captured.out == ""  # humans: stderr only


def test_more_samples_than_items_says_so(cli_store, capsys) -> None:
    """The store has 10 ok positions x 2 flips = 20 items: asking 4096 uses 20 and says so (it was
    cut silently); a request the store covers prints no note."""
    code = _run(["stats", str(cli_store), "--samples", "4096", "--latents-only", "--device", "cpu",
                 "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["sampling"]["items"] == 20
    assert "note: --samples 4096: the store has 20 items" in captured.err
    code = _run(["stats", str(cli_store), "--samples", "8", "--latents-only", "--device", "cpu"])
    assert code == 0 and "note:" not in capsys.readouterr().err


def test_stats_refusal_is_one_line(cli_store, other_vae_dir, capsys) -> None:
    code = _run(
        ["stats", str(cli_store), "--vae", str(other_vae_dir), "--samples", "2", "--device", "cpu"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 4  # StoreMismatchError
    assert "weights_hash" in err and "Traceback" not in err


def test_stats_on_missing_store_is_one_line(tmp_path, capsys) -> None:
    code = _run(["stats", str(tmp_path / "nope.zarr"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 4 and "no latent store at" in err and "does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_stats_on_a_folder_that_is_not_a_store_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "plain").mkdir()
    code = _run(["stats", str(tmp_path / "plain"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 4 and "not an lplkit latent store" in err


def _assert_merged_equals_single(multi, single) -> None:
    """Statistics merged over ranks equal one process's: same items, latent moments to float64
    rounding, per-layer moments to float32 rounding, identical histogram counts (same pilot edges)."""
    assert np.array_equal(multi.items, single.items)
    torch.testing.assert_close(multi.latent_mean, single.latent_mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(multi.latent_std, single.latent_std, rtol=1e-10, atol=1e-12)
    for a, b in zip(multi.layers, single.layers, strict=True):
        assert a.count == b.count
        torch.testing.assert_close(a.mean, b.mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a.std, b.std, rtol=1e-6, atol=1e-7)
        assert torch.equal(a.hist.counts, b.hist.counts)


@pytest.mark.slow  # ~30 s on 2 shared CPU cores (two processes import torch + diffusers)
def test_stats_under_torchrun_gloo_equals_single_process(cli_store, capsys, tmp_path) -> None:
    """Two gloo ranks each take half the items; the merged result equals one process's."""
    import os
    import subprocess
    import sys

    from lplkit.stats.storage import load_stats

    args = ["stats", str(cli_store), "--samples", "10", "--depth", "1", "--batch-size", "2",
            "--seed", "5", "--device", "cpu", "--json"]  # fmt: skip
    assert _run(args) == 0
    single = load_stats(str(cli_store))
    capsys.readouterr()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "lplkit", *args]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)  # rank 0 alone prints
    assert out["sampling"]["world_size"] == 2
    multi = load_stats(str(cli_store))
    assert single is not None and multi is not None and multi.meta["run"] != single.meta["run"]
    _assert_merged_equals_single(multi, single)


def test_stats_on_two_forked_gloo_ranks_equals_single_process(cli_store, tmp_path) -> None:
    """The torchrun test above in the default suite: two ranks with torchrun's environment (gloo),
    forked from this process (`forked_ranks`), each taking half the items; merged == one process."""
    from helpers.ranks import run_forked_ranks

    from lplkit.stats.storage import load_stats

    args = ["stats", str(cli_store), "--samples", "10", "--depth", "1", "--batch-size", "2",
            "--seed", "5", "--device", "cpu"]  # fmt: skip
    assert _run(args) == 0
    single = load_stats(str(cli_store))
    assert run_forked_ranks(lambda rank: _run(args)) == [0, 0]
    multi = load_stats(str(cli_store))
    assert single is not None and multi is not None and multi.meta["run"] != single.meta["run"]
    assert multi.meta["sampling"]["world_size"] == 2 and single.meta["sampling"]["world_size"] == 1
    _assert_merged_equals_single(multi, single)
