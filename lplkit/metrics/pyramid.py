"""Gaussian / Laplacian image pyramids (Burt & Adelson 1983), as used by the SWD metric.

The filters match OpenCV's `pyrDown`/`pyrUp` and Karras et al. (2018)'s `sliced_wasserstein.py`:
a separable binomial kernel g = [1, 4, 6, 4, 1] / 16 with mirror ("reflect", edge not repeated)
boundaries.

    down(x)  = (g * g^T * x)[::2, ::2]
    up(x)    = 4 * (g * g^T) * zero_insert(x)          (zeros at odd rows/columns)
    L_k      = G_k - up(G_{k+1}),   G_0 = x,  G_{k+1} = down(G_k),   L_{K-1} = G_{K-1}

so `reconstruct(laplacian_pyramid(x)) == x` up to float rounding, whatever the filter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_BINOMIAL_5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x_BCHW: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Depthwise 5x5 binomial blur with reflect padding (scipy.ndimage mode="mirror")."""
    c = x_BCHW.shape[1]
    g = _BINOMIAL_5.to(device=x_BCHW.device, dtype=x_BCHW.dtype)
    kernel = (gain * torch.outer(g, g)).expand(c, 1, 5, 5)
    return F.conv2d(F.pad(x_BCHW, (2, 2, 2, 2), mode="reflect"), kernel, groups=c)


def pyr_down(x_BCHW: torch.Tensor) -> torch.Tensor:
    """Blur, then keep even rows and columns (half resolution, rounding up)."""
    return _blur(x_BCHW)[:, :, ::2, ::2]


def pyr_up(x_BCHW: torch.Tensor) -> torch.Tensor:
    """Insert zeros between samples (double resolution), then blur with gain 4 to keep the mean."""
    b, c, h, w = x_BCHW.shape
    up = x_BCHW.new_zeros(b, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x_BCHW
    return _blur(up, gain=4.0)


def laplacian_pyramid(x_BCHW: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Levels finest first: [L_0 (full res), L_1 (1/2), ..., L_{levels-1} = coarsest Gaussian].

    H and W must be divisible by 2**(levels-1) so every up-sampled level matches its parent.
    """
    h, w = x_BCHW.shape[-2:]
    if levels < 1 or h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
        raise ValueError(f"{h}x{w} images cannot form a {levels}-level pyramid")
    pyramid = [x_BCHW if x_BCHW.is_floating_point() else x_BCHW.float()]
    for _ in range(1, levels):
        coarser = pyr_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - pyr_up(coarser)
        pyramid.append(coarser)
    return pyramid


def reconstruct(pyramid: list[torch.Tensor]) -> torch.Tensor:
    """Inverse of `laplacian_pyramid`: G_k = L_k + up(G_{k+1}) from the coarsest level up."""
    x = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        x = level + pyr_up(x)
    return x
