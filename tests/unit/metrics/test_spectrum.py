"""Radial power spectra vs a numpy loop oracle and analytic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lplkit.metrics.spectrum import PowerSpectrum, radial_bins, spectrum_distance


def _images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).double()


def _spectrum(x: torch.Tensor, mode: str = "gray") -> PowerSpectrum:
    s = PowerSpectrum(mode)
    for chunk in x.split(3):  # several batches: accumulation must not depend on batching
        s.update(chunk)
    return s


def _np_radial_log_power(imgs: np.ndarray) -> np.ndarray:
    """Oracle: per-pixel loop over numpy FFT frequencies of the luma images."""
    _, _, h, w = imgs.shape
    y = 0.299 * imgs[:, 0] + 0.587 * imgs[:, 1] + 0.114 * imgs[:, 2]
    power = (np.abs(np.fft.fft2(y / 255.0)) ** 2).mean(axis=0) / (h * w)
    m = min(h, w)
    sums, counts = np.zeros(m // 2 + 1), np.zeros(m // 2 + 1)
    for i, fy in enumerate(np.fft.fftfreq(h)):
        for j, fx in enumerate(np.fft.fftfreq(w)):
            b = int(np.round(np.hypot(fy, fx) * m))
            if b <= m // 2:
                sums[b] += power[i, j]
                counts[b] += 1
    return np.log10(sums / counts)


def test_radial_log_power_matches_numpy_loop():
    x = _images(5, seed=0, size=16)
    log_p, freqs = _spectrum(x).radial_log_power()
    np.testing.assert_allclose(log_p[0].numpy(), _np_radial_log_power(x.numpy()), rtol=1e-10)
    np.testing.assert_allclose(freqs.numpy(), np.arange(9) / 16)


def test_cosine_puts_its_power_in_its_own_bin():
    size, k0 = 32, 5
    yy = np.arange(size)[:, None].repeat(size, 1)
    img = 127.5 + 100 * np.cos(2 * np.pi * k0 * yy / size)
    x = torch.from_numpy(np.stack([img] * 3)[None])
    log_p, _ = _spectrum(x).radial_log_power()
    power = 10 ** log_p[0].numpy()
    others = np.delete(power, [0, k0])
    assert power[k0] > 1e6 * others.max()


def test_identical_sets_give_exactly_zero():
    x = _images(6, seed=1)
    res = spectrum_distance(_spectrum(x), _spectrum(x.clone()))
    assert res.distance == 0.0 and res.distance_high == 0.0


def test_blur_shows_up_in_the_high_frequency_half():
    x = _images(6, seed=2)
    k = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    k = (torch.outer(k, k) / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), k, groups=3)
    res = spectrum_distance(_spectrum(x), _spectrum(blurred))
    assert res.distance_high > res.distance > 0
    low = np.array(res.freqs) <= 0.25
    assert (
        np.abs(np.subtract(res.log_power_samples, res.log_power_ref))[low].mean()
        < res.distance_high
    )


def test_rgb_mode_and_size_mismatch():
    x = _images(4, seed=3)
    res = spectrum_distance(_spectrum(x, "rgb"), _spectrum(_images(4, seed=4), "rgb"))
    assert res.mode == "rgb" and res.distance > 0
    with pytest.raises(ValueError):
        spectrum_distance(_spectrum(x), _spectrum(_images(4, seed=5, size=16)))
    with pytest.raises(ValueError):
        PowerSpectrum("hsv")


def test_bins_cover_up_to_nyquist_only():
    idx, n_bins, freqs = radial_bins(8, 8)
    assert n_bins == 5 and freqs[-1] == 0.5
    assert (idx == -1).sum() > 0  # corners beyond the Nyquist circle are excluded
    assert idx[0, 0] == 0
