"""Sampled images to files: [-1, 1] tensors -> uint8, tiled grids, ``.npz`` batches (written
atomically: a crash never leaves a half-written file)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lplkit.errors import ConfigError

__all__ = ["make_grid", "make_mixed_grid", "save_grid", "save_npz", "to_uint8"]


def to_uint8(images: Tensor) -> np.ndarray:
    """``(B, C, H, W)`` images in [-1, 1] -> ``(B, H, W, C)`` uint8.

    ``u = clamp(127.5 x + 128, 0, 255)`` truncated, i.e. ``round(127.5 (x + 1))`` (DiT's sample_ddp).
    """
    if images.ndim != 4:
        raise ConfigError(f"expected (B, C, H, W) images, got shape {tuple(images.shape)}")
    u = (127.5 * images.detach().float() + 128.0).clamp(0, 255).to(torch.uint8)
    return u.permute(0, 2, 3, 1).cpu().numpy()


def _as_uint8_nhwc(images: Tensor | np.ndarray) -> np.ndarray:
    arr = to_uint8(images) if isinstance(images, Tensor) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise ConfigError(
            f"expected uint8 (N, H, W, C) images with C in 1/3/4, got {arr.dtype} {arr.shape}"
        )
    return arr


def make_grid(images: Tensor | np.ndarray, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Tile ``N`` images into rows of ``nrow`` with ``padding`` black pixels -> ``(H', W', C)`` uint8.

    Accepts uint8 ``(N, H, W, C)`` arrays or ``(N, C, H, W)`` tensors in [-1, 1].
    """
    arr = _as_uint8_nhwc(images)
    n, h, w, c = arr.shape
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    grid = np.zeros(
        (nrows * (h + padding) + padding, ncol * (w + padding) + padding, c), dtype=np.uint8
    )
    for k in range(n):
        r, q = divmod(k, ncol)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = arr[k]
    return grid


def make_mixed_grid(
    groups: Sequence[Tensor | np.ndarray], nrow: int = 8, padding: int = 2
) -> np.ndarray:
    """Images of several sizes (one group per size, e.g. aspect-ratio buckets) in one grid.

    Each group starts a new row (a group of more than ``nrow`` images wraps onto more rows), every
    cell is the largest height x the largest width of all groups, and each image sits centred in
    its cell on black: sizes stay comparable, nothing is stretched or cropped.
    """
    arrs = [_as_uint8_nhwc(g) for g in groups]
    if not arrs or any(a.shape[-1] != arrs[0].shape[-1] for a in arrs):
        raise ConfigError("make_mixed_grid needs image groups of the same channel count")
    h = max(a.shape[1] for a in arrs)
    w = max(a.shape[2] for a in arrs)
    ncol = min(nrow, max(len(a) for a in arrs))
    rows = [-(-len(a) // ncol) for a in arrs]
    grid = np.zeros(
        (sum(rows) * (h + padding) + padding, ncol * (w + padding) + padding, arrs[0].shape[-1]),
        dtype=np.uint8,
    )
    first_row = 0
    for a, n_rows in zip(arrs, rows, strict=True):
        ih, iw = a.shape[1:3]
        for k in range(len(a)):
            r, q = divmod(k, ncol)
            y = padding + (first_row + r) * (h + padding) + (h - ih) // 2
            x = padding + q * (w + padding) + (w - iw) // 2
            grid[y : y + ih, x : x + iw] = a[k]
        first_row += n_rows
    return grid


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same folder, then rename (no half-written files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_grid(
    images: Tensor | np.ndarray | Sequence[Tensor | np.ndarray], path: str | Path, nrow: int = 8
) -> Path:
    """Save :func:`make_grid` of ``images`` as an image file (format from the suffix, e.g. PNG);
    a list of image groups of different sizes: :func:`make_mixed_grid`."""
    from PIL import Image

    path = Path(path)
    if isinstance(images, list | tuple):
        grid = make_mixed_grid(images, nrow)
    else:
        grid = make_grid(images, nrow)  # type: ignore[arg-type]
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    _atomic_write(path, lambda p: img.save(p, format=fmt))
    return path


def save_npz(
    images: Tensor | np.ndarray | dict[str, Tensor | np.ndarray], path: str | Path
) -> Path:
    """Save uint8 ``(N, H, W, 3)`` images as ``arr_0`` of an ``.npz``.

    That is the batch format of the ADM evaluator (openai/guided-diffusion ``evaluations/``) and the
    DiT / SiT ``sample_ddp`` scripts; tensors in [-1, 1] are converted with :func:`to_uint8`. A
    dict of names to image batches (several sizes: one array cannot hold them) saves one array per
    name instead.
    """
    path = Path(path)
    arrays = (
        {k: _as_uint8_nhwc(v) for k, v in images.items()}
        if isinstance(images, dict)
        else {"arr_0": _as_uint8_nhwc(images)}
    )

    def write(p: Path) -> None:
        with open(p, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool

    _atomic_write(path, write)
    return path
