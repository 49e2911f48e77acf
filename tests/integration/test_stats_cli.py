"""`lplkit stats` command: --json validates against schemas/stats.schema.json; errors are one line."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.integration.test_stats_store import _write_store

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "stats.schema.json"


def _run(args: list[str]) -> int:
    from lplkit.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code)


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory, tiny_vae_dir) -> Path:
    url = tmp_path_factory.mktemp("stats_cli") / "latents.zarr"
    _write_store(url, tiny_vae_dir)
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
    assert code == 4 and "not an lplkit latent store" in err
