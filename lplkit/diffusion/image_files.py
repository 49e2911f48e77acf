"""Sampled images to files: [-1, 1] tensors -> uint8, tiled grids, ``.npz`` batches (written
atomically: a crash never leaves a half-written file)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lplkit.errors import ConfigError

__all__ = ["PROMPTS_FILE", "make_captioned_grid", "make_grid", "make_mixed_grid",
           "save_captioned_grid", "save_grid", "save_npz", "to_uint8"]  # fmt: skip

#: The prompt of each sampled image of a text run, written beside images/ by `lplkit sample`:
#: ``{"prompts": [...], "images": ["images/000000.png", ...], "source": ...}``
PROMPTS_FILE = "prompts.json"


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


def _wrap(draw: Any, text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """`text` broken at spaces into at most `max_lines` lines of at most `width` pixels (the last
    one cut with "..." when the text does not fit)."""
    lines: list[str] = []
    words = text.split() or [""]
    line = ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += "..."
    for i, ln in enumerate(lines):  # one word wider than the cell: cut it
        while len(ln) > 1 and draw.textlength(ln, font=font) > width:
            ln = ln[:-4] + "..." if len(ln) > 4 else ln[:-1]
        lines[i] = ln
    return lines


def make_captioned_grid(
    images: Tensor | np.ndarray,
    captions: list[str],
    nrow: int = 8,
    padding: int = 2,
    min_width: int = 128,
    max_lines: int = 3,
) -> np.ndarray:
    """:func:`make_grid`'s layout with each image's caption drawn under it -> ``(H', W', 3)`` uint8.

    Images narrower than ``min_width`` are enlarged by an integer factor (nearest neighbour, so
    pixels stay pixels) for the text to fit; captions wrap to ``max_lines`` lines of the default
    PIL font, white on black.
    """
    from PIL import Image, ImageDraw, ImageFont

    arr = _as_uint8_nhwc(images)
    n, h, w, c = arr.shape
    if len(captions) != n:
        raise ConfigError(f"{n} images but {len(captions)} captions")
    k = max(1, -(-min_width // w))
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = int(probe.textbbox((0, 0), "Ag", font=font)[3]) + 2
    cell_w, cell_h = k * w, k * h + max_lines * line_h + 2
    ncol = min(nrow, n)
    nrows = -(-n // ncol)
    canvas = Image.new(
        "RGB", (ncol * (cell_w + padding) + padding, nrows * (cell_h + padding) + padding)
    )
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, q = divmod(i, ncol)
        x, y = padding + q * (cell_w + padding), padding + r * (cell_h + padding)
        tile = Image.fromarray(arr[i][..., 0] if c == 1 else arr[i][..., :3]).convert("RGB")
        canvas.paste(tile.resize((cell_w, k * h), Image.Resampling.NEAREST), (x, y))
        for j, line in enumerate(_wrap(draw, captions[i], font, cell_w - 2, max_lines)):
            draw.text((x + 1, y + k * h + 1 + j * line_h), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def save_captioned_grid(
    images: Tensor | np.ndarray, captions: list[str], path: str | Path, nrow: int = 8
) -> Path:
    """Save :func:`make_captioned_grid` of ``images`` and ``captions`` (format from the suffix)."""
    from PIL import Image

    path = Path(path)
    img = Image.fromarray(make_captioned_grid(images, captions, nrow))
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
