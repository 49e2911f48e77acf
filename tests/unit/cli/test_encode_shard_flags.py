"""`lplkit encode --shard-mb / --shard-size`: refused together or out of range, before anything is
written."""

from __future__ import annotations

from helpers.cli import run_cli

# -- encode's flags ---------------------------------------------------------------------------------


def test_encode_refuses_shard_size_with_shard_mb(tmp_path, capsys):
    out = tmp_path / "s.zarr"
    args = ["encode", "--dataset", "openmoji", "--res", "32", "--out", str(out)]
    code, _, err = run_cli([*args, "--shard-size", "8", "--shard-mb", "1"], capsys)
    assert code == 2 and "--shard-size and --shard-mb" in err
    code, _, err = run_cli([*args, "--shard-mb", "0"], capsys)
    assert code == 2 and "--shard-mb" in err
    assert not out.exists()
