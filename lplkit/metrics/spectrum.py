"""Radially averaged log power spectra and the distance between two image sets' spectra.

For an image x of size H x W in [0, 1] (grayscale luma Y = 0.299 R + 0.587 G + 0.114 B, or each RGB
channel), the power spectrum is P(k) = |DFT(x)(k)|^2 / (H W). Frequencies k are in cycles/pixel,
|k| in [0, 0.5]; bin b holds the frequencies with round(|k| * min(H, W)) = b (b <= min(H, W) / 2, so
the corners beyond the Nyquist circle are left out). The set's spectrum is

    S(b) = log10( mean_images mean_{k in bin b} P(k) )

and the distance between samples and references is the mean absolute difference of S over bins,
overall and over the high-frequency half (|k| > 0.25 cycles/pixel), where blur and over-smoothing
show up first. Identical sets give exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_LUMA = (0.299, 0.587, 0.114)


def radial_bins(height: int, width: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Bin index of every DFT frequency (-1 beyond Nyquist), the number of bins, bin frequencies."""
    n = min(height, width)
    fy = torch.fft.fftfreq(height, dtype=torch.float64)
    fx = torch.fft.fftfreq(width, dtype=torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    idx = torch.round(radius * n).long()
    n_bins = n // 2 + 1
    idx[idx >= n_bins] = -1
    return idx, n_bins, torch.arange(n_bins, dtype=torch.float64) / n


class PowerSpectrum:
    """Accumulates the mean power spectrum of a stream of image batches."""

    def __init__(self, mode: str = "gray") -> None:
        if mode not in ("gray", "rgb"):
            raise ValueError(f"spectrum mode must be 'gray' or 'rgb', not {mode!r}")
        self.mode = mode
        self._sum: torch.Tensor | None = None
        self.count = 0

    def update(self, images_BCHW: torch.Tensor) -> None:
        """Add a batch of RGB images in [0, 255] (uint8 or float)."""
        x = images_BCHW.double().cpu() / 255.0
        if self.mode == "gray":
            luma = torch.tensor(_LUMA, dtype=torch.float64).view(1, 3, 1, 1)
            x = (x * luma).sum(dim=1, keepdim=True)
        h, w = x.shape[-2:]
        power = torch.fft.fft2(x).abs().square().sum(dim=0) / (
            h * w
        )  # (C, H, W), summed over images
        if self._sum is None:
            self._sum = power
        elif self._sum.shape != power.shape:
            raise ValueError(f"image size {h}x{w} differs from the first batch's")
        else:
            self._sum += power
        self.count += x.shape[0]

    def radial_log_power(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, n_bins) log10 of the radially averaged mean power, and the bin frequencies."""
        if self._sum is None:
            raise ValueError("no images were added")
        c, h, w = self._sum.shape
        idx, n_bins, freqs = radial_bins(h, w)
        keep = idx.reshape(-1) >= 0
        flat = (self._sum / self.count).reshape(c, -1)[:, keep]
        bins = idx.reshape(-1)[keep]
        sums = torch.zeros(c, n_bins, dtype=torch.float64).index_add_(1, bins, flat)
        counts = torch.bincount(bins, minlength=n_bins).to(torch.float64)
        return torch.log10((sums / counts).clamp_min(1e-30)), freqs


@dataclass
class SpectrumResult:
    """Mean |delta log10 power| overall and for |k| > 0.25, plus both curves (channel-averaged)."""

    distance: float
    distance_high: float
    freqs: list[float]
    log_power_samples: list[float]
    log_power_ref: list[float]
    mode: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def spectrum_distance(samples: PowerSpectrum, ref: PowerSpectrum) -> SpectrumResult:
    """Compare two accumulated spectra (same image size and mode)."""
    log_s, freqs = samples.radial_log_power()
    log_r, freqs_r = ref.radial_log_power()
    if log_s.shape != log_r.shape or not torch.equal(freqs, freqs_r):
        raise ValueError("samples and references have different image sizes or spectrum modes")
    diff = (log_s - log_r).abs()  # (C, n_bins)
    high = freqs > 0.25
    return SpectrumResult(
        distance=float(diff.mean()),
        distance_high=float(diff[:, high].mean()),
        freqs=freqs.tolist(),
        log_power_samples=log_s.mean(dim=0).tolist(),
        log_power_ref=log_r.mean(dim=0).tolist(),
        mode=samples.mode,
    )
