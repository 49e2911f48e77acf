"""`--vae ORG/NAME` loads from a hub cache laid out as `huggingface_hub` writes it (offline, under a
temporary HF_HOME), `--vae-revision` picks another commit, the manifest records the resolved commit,
and the stored moments equal a direct `AutoencoderKL.from_pretrained` encode from the same cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import run_cli, subprocess_env
from helpers.hub_cache import write_hub_cache
from helpers.images import reference_crop, write_image_folder
from helpers.models import make_tiny_vae
from helpers.stores import read_store
from PIL import Image

from lplkit.errors import AutoencoderError

REPO_ID = "lplkit-test/tiny-pipeline"
MAIN = "a" * 40
OLD = "b" * 40
RES = 16


def _vae_files(seed: int, tmp: Path) -> dict[str, bytes]:
    """A pipeline-like repo: the autoencoder under vae/, as `save_pretrained` writes it."""
    out = tmp / f"vae-{seed}"
    make_tiny_vae(seed).save_pretrained(out)
    return {f"vae/{p.name}": p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hub")
    home = tmp / "hf-home"
    write_hub_cache(home, REPO_ID, _vae_files(1, tmp), OLD, ref=None)
    write_hub_cache(home, REPO_ID, _vae_files(0, tmp), MAIN)  # refs/main -> MAIN
    return home


def _encode(home: Path, images: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "lplkit", "encode", "--dataset", str(images), "--res", str(RES),
            "--vae", REPO_ID, "--vae-subfolder", "vae", "--out", str(out), "--workers", "0",
            "--device", "cpu", "--json", *extra]  # fmt: skip
    env = subprocess_env(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)


def _direct(home: Path, revision: str | None):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(
        REPO_ID, subfolder="vae", revision=revision, cache_dir=home / "hub"
    ).eval()


def _check_moments(store: dict, images: Path, vae) -> None:
    import torch

    for row in store["index"]:
        arr = reference_crop(Image.open(images / row["key"]).convert("RGB"), RES)
        x = torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
        got = store["moments"][row["position"]].astype(np.float32)
        np.testing.assert_allclose(got[0], dist.mean[0].numpy(), atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(got[1], dist.std[0].numpy(), atol=2e-3, rtol=2e-3)


def test_vae_by_hub_id_offline_equals_from_pretrained(hub_home, tmp_path):
    """The CLI in a subprocess whose only pointer to the cache is HF_HOME."""
    images = write_image_folder(tmp_path / "img", {"a": 2, "b": 1}, size=(20, 18))
    res = _encode(hub_home, images, tmp_path / "s.zarr")
    assert res.returncode == 0, res.stderr
    # diffusers' own deprecated hub arguments are its business, not a line of the user's log
    assert "warning:" not in res.stderr, res.stderr
    store = read_store(tmp_path / "s.zarr")
    ae = store["manifest"]["autoencoder"]
    assert (ae["id"], ae["subfolder"], ae["revision"]) == (REPO_ID, "vae", MAIN)
    _check_moments(store, images, _direct(hub_home, None))


@pytest.fixture
def in_cache(hub_home, monkeypatch):
    """This process reading `hub_home`'s cache (huggingface_hub reads HF_HOME once, at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    return hub_home


def test_vae_revision_loads_that_commit(in_cache, tmp_path):
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder

    images = write_image_folder(tmp_path / "img", {"a": 2}, size=(20, 18))
    vae = load_autoencoder(REPO_ID, subfolder="vae", revision=OLD)
    info = autoencoder_info(vae, REPO_ID, "vae")
    assert info["revision"] == OLD
    main_info = autoencoder_info(load_autoencoder(REPO_ID, subfolder="vae"), REPO_ID, "vae")
    assert main_info["revision"] == MAIN and main_info["weights_hash"] != info["weights_hash"]
    direct = _direct(in_cache, OLD)
    assert all(
        np.array_equal(a.numpy(), direct.state_dict()[k].numpy())
        for k, a in vae.state_dict().items()
    )
    with pytest.raises(AutoencoderError, match=r"at revision 'nope' is not in the local hub cache"):
        load_autoencoder(REPO_ID, subfolder="vae", revision="nope")
    with pytest.raises(AutoencoderError, match="applies to hub ids"):
        load_autoencoder(str(images), revision=OLD)


def test_vae_hub_id_missing_from_cache_is_one_line(in_cache, tmp_path, capsys):
    images = write_image_folder(tmp_path / "img", {"a": 1})
    code, _, err = run_cli(["encode", "--dataset", str(images), "--res", "16", "--vae",
                            "lplkit-test/not-cached", "--out", str(tmp_path / "s.zarr")], capsys)  # fmt: skip
    assert code == 5
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "lplkit-test/not-cached is not in the local hub cache" in lines[0]
    assert "HF_HUB_OFFLINE=1" in lines[0] and "local diffusers directory" in lines[0]
    assert not (tmp_path / "s.zarr").exists()
