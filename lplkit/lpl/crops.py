"""Latent crops for a cheaper LPL: decode a c x c window of each latent instead of the whole latent.

The decoder's cost scales with the latent area at every depth, so ``crop = h / 2`` decodes 1/4 of the
pixels of every tapped feature. Prediction and target of a sample are cropped at the *same* window;
each sample gets its own window, placed by uniform draws ``u`` in [0, 1)^2 (row, column) that the
caller supplies (the trainer draws them from its seeded per-step generator, so resume stays exact):

    random:  offset = floor(u * (size - c + 1))      any position, 0 .. size - c
    grid:    offset = floor(u * (size // c)) * c     one of the (size // c)^2 non-overlapping tiles

Cropping happens on the latent, before the decoder: a window's border features see the decoder's
zero padding instead of the neighbouring latents (a 3x3-conv receptive field per layer), so a crop's
features are not exactly the crop of the full latent's features.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lplkit.errors import ConfigError
from lplkit.lpl.config import CROP_MODES

__all__ = ["crop_offsets", "crop_windows"]


def crop_offsets(u: Tensor, size: tuple[int, int], crop: int, mode: str) -> Tensor:
    """Top-left corners (n, 2) int64 of the windows for uniform draws `u` (n, 2) in [0, 1).

    Raises:
        ConfigError: the crop is larger than the latent, or an unknown mode.
    """
    h, w = size
    if crop > h or crop > w:
        raise ConfigError(f"LPL crop={crop} is larger than the {h}x{w} latent")
    if mode == "random":
        n_pos = torch.tensor([h - crop + 1, w - crop + 1], device=u.device)
        step = 1
    elif mode == "grid":
        n_pos = torch.tensor([h // crop, w // crop], device=u.device)
        step = crop
    else:
        raise ConfigError(f"LPL crop_mode={mode!r} is not one of {', '.join(CROP_MODES)}")
    cell = (u.to(torch.float64) * n_pos).floor().long()
    return torch.minimum(cell, n_pos - 1) * step  # u == 1.0 (never drawn by rand) stays inside


def crop_windows(z_BCHW: Tensor, offsets: Tensor, crop: int) -> Tensor:
    """The c x c window of each sample at `offsets` (n, 2): (n, C, c, c), differentiable.

    A gather on the flattened H*W axis: no host sync, one kernel, any per-sample offsets.
    """
    b, c, h, w = z_BCHW.shape
    ar = torch.arange(crop, device=z_BCHW.device)
    rows = offsets[:, 0:1].to(z_BCHW.device) + ar  # (n, crop)
    cols = offsets[:, 1:2].to(z_BCHW.device) + ar
    flat = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, crop * crop)
    out = z_BCHW.reshape(b, c, h * w).gather(2, flat.expand(b, c, crop * crop))
    return out.reshape(b, c, crop, crop)
