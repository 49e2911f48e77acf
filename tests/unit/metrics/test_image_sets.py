"""Image sets (folder, ADM npz, latent store) and the `lplkit eval` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from PIL import Image

from lplkit.errors import ConfigError, EvaluationError
from lplkit.metrics.image_sets import FolderImages, NpzImages, open_image_set, select


def _arrays(n: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _folder(root, arrays: np.ndarray, nested: bool = True):
    (root / "sub").mkdir(parents=True)
    for i, a in enumerate(arrays):  # PNG is lossless: the folder must read back the arrays
        Image.fromarray(a).save(root / ("sub" if nested and i % 2 else "") / f"{i:03d}.png")
    return root


def test_npz_reads_arr0_and_expands_grayscale(tmp_path):
    a = _arrays()
    np.savez(tmp_path / "rgb.npz", a)
    assert np.array_equal(open_image_set(tmp_path / "rgb.npz").read(np.array([4, 1])), a[[4, 1]])
    np.savez(tmp_path / "gray.npz", a[..., :1])
    gray = NpzImages(tmp_path / "gray.npz").read(np.array([0]))
    assert gray.shape == (1, 32, 32, 3) and np.array_equal(gray[0, ..., 2], a[0, ..., 0])


def test_npz_rejects_wrong_layouts(tmp_path):
    np.savez(tmp_path / "f.npz", _arrays().astype(np.float32))
    with pytest.raises(EvaluationError, match="uint8"):
        NpzImages(tmp_path / "f.npz")
    np.savez(tmp_path / "nchw.npz", _arrays().transpose(0, 3, 1, 2).copy())
    with pytest.raises(EvaluationError, match=r"\(N, H, W, 3\)"):
        NpzImages(tmp_path / "nchw.npz")
    np.savez(tmp_path / "empty.npz", other=np.zeros(3))
    with pytest.raises(EvaluationError, match="neither"):
        NpzImages(tmp_path / "empty.npz")


def test_folder_reads_images_recursively_in_sorted_order(tmp_path):
    a = _arrays(5)
    root = _folder(tmp_path / "imgs", a)
    images = open_image_set(root)
    assert isinstance(images, FolderImages) and len(images) == 5
    order = [int(p.stem) for p in images.files]  # sorted by relative path: top level, then sub/
    assert np.array_equal(images.read(np.arange(5)), a[order])


def test_folder_with_mixed_sizes_names_the_file(tmp_path):
    root = _folder(tmp_path / "imgs", _arrays(2))
    Image.fromarray(_arrays(1, size=16)[0]).save(root / "zzz.png")
    with pytest.raises(EvaluationError, match=r"zzz\.png: size 16x16"):
        FolderImages(root).read(np.arange(3))
    with pytest.raises(EvaluationError, match="not an image folder"):
        open_image_set(tmp_path / "nope")


def test_select_is_seeded_and_sorted():
    assert np.array_equal(select(5, None, 0), np.arange(5))
    s = select(100, 10, seed=3)
    assert len(set(s)) == 10 and np.all(np.diff(s) > 0) and np.array_equal(s, select(100, 10, 3))
    with pytest.raises(ConfigError):
        select(5, 0, 0)


def test_store_reference_is_decoded_from_mean_latents(tmp_path, tiny_vae_dir):
    from lplkit.autoencoders.loading import load_autoencoder
    from lplkit.store.synthetic import write_synthetic_store

    url = tmp_path / "s.zarr"
    written = write_synthetic_store(
        url,
        count=6,
        latent_shape=(4, 8, 8),
        skipped=[2],
        dtype="float32",
        autoencoder={"id": str(tiny_vae_dir), "class": "AutoencoderKL", "config_hash": "0"},
    )
    images = open_image_set(str(url))
    assert len(images) == 5  # the skipped position is left out
    got = images.read(np.array([1, 2]))  # ok positions 1 and 3
    vae = load_autoencoder(str(tiny_vae_dir))
    with torch.no_grad():  # oracle: a direct decoder call on the stored means
        x = vae.decode(torch.from_numpy(written["moments"][[1, 3], 0])).sample
    expected = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert got.shape == (2, 32, 32, 3) and np.array_equal(got, expected)


def _run_cli(args, capsys) -> tuple[int, str, str]:
    code, out, err = run_cli(args, capsys)
    return code, out, " ".join(err.split())  # rich wraps long lines


def test_cli_eval_json(tmp_path, capsys):
    a = _arrays(8)
    np.savez(tmp_path / "a.npz", a)
    root = _folder(tmp_path / "imgs", a, nested=False)  # same order as the npz
    args = [
        "eval",
        "--samples",
        str(tmp_path / "a.npz"),
        "--ref",
        str(root),
        "--json",
        "--swd-dirs",
        "16",
        "--swd-repeats",
        "1",
        "--n",
        "6",
        "--batch-size",
        "4",
    ]
    code, out, _ = _run_cli(args, capsys)
    assert code == 0
    res = json.loads(out)
    assert res["samples"]["n"] == 6 and res["ref"]["n"] == 6
    # same images, same seeded subset and patches: both metrics exactly 0
    assert list(res["swd"]["levels"]) == ["32px", "16px"] and res["swd"]["avg"] == 0.0
    assert res["spectrum"]["distance"] == 0.0
    code, out, err = _run_cli(args[:5] + args[6:10], capsys)  # human output: a table on stderr
    assert code == 0 and out == "" and "SWD x1e3 32px" in err


def test_cli_eval_errors_are_one_line_with_exit_codes(tmp_path, capsys, monkeypatch):
    np.savez(tmp_path / "a.npz", _arrays(2))
    monkeypatch.delenv("LPLKIT_INCEPTION", raising=False)
    code, _, err = _run_cli(
        [
            "eval",
            "--samples",
            str(tmp_path / "a.npz"),
            "--ref",
            str(tmp_path / "a.npz"),
            "--metrics",
            "fid",
            "--inception",
            str(tmp_path / "missing.pt"),
        ],
        capsys,
    )
    assert code == EvaluationError.exit_code and "missing.pt: no such file" in err
    code, _, err = _run_cli(
        ["eval", "--samples", "x.npz", "--ref", "y", "--metrics", "swd,psnr"], capsys
    )
    assert code == ConfigError.exit_code and "psnr" in err
    np.savez(tmp_path / "b.npz", _arrays(2, size=64))
    code, _, err = _run_cli(
        ["eval", "--samples", str(tmp_path / "a.npz"), "--ref", str(tmp_path / "b.npz")], capsys
    )
    assert code == EvaluationError.exit_code and "one resolution" in err
