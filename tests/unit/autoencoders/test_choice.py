"""Without `--vae` only `--dataset openmoji` gets the bundled emoji autoencoder; anything else is a
one-line error that lists common choices, and `encode --help` shows them."""

from __future__ import annotations

import subprocess
import sys

from helpers.cli import run_cli, subprocess_env

from lplkit.autoencoders.choice import COMMON_AUTOENCODERS, default_autoencoder


def test_default_only_for_openmoji():
    assert default_autoencoder("openmoji") == "tiny-openmoji"
    for spec in ("imagenet", "cifar10", "/data/images", "parquet:/x", "org/name", "openmojis"):
        assert default_autoencoder(spec) is None, spec


def test_missing_vae_is_one_line_listing_choices(tmp_path, capsys):
    code, out, err = run_cli(
        ["encode", "--dataset", "imagenet", "--res", "512", "--out", str(tmp_path / "s")], capsys
    )
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--vae is required for --dataset 'imagenet'" in err
    for repo, _, _ in COMMON_AUTOENCODERS:
        assert repo in err
    assert "tiny-openmoji" in err and not (tmp_path / "s").exists()


def test_help_lists_vae_choices():
    res = subprocess.run(
        [sys.executable, "-m", "lplkit", "encode", "--help"],
        env={**subprocess_env(), "COLUMNS": "400"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "--vae-revision" in text and "Required unless --dataset openmoji" in text
    for repo, _, _ in COMMON_AUTOENCODERS:
        assert repo in text
    for prefix in ("folder:", "parquet:", "disk:", "wds:", "hub:", "openmoji"):
        assert prefix in text  # every dataset kind is named in --help
