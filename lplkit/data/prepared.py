"""A torch `Dataset` over a source's positions that yields decoded, checked, ADM-cropped samples.

It runs in DataLoader worker processes: PIL decoding and cropping happen there, so the process that
drives the autoencoder only stacks tensors. A bad image never raises here: it becomes a sample with
`x = None` and an index row with `status = "skipped"` and a reason (the caller decides whether
`--strict` turns it into an error).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from lplkit.data.sources import ImageSource, open_image, safe_text
from lplkit.data.transforms import MIN_IMAGE_SIDE, oriented_size, prepare_image
from lplkit.errors import BadImageError

__all__ = ["ImageSizes", "PreparedSample", "PreparedSource", "collate_prepared"]


@dataclass
class PreparedSample:
    """One position of the source, ready for the autoencoder (or skipped)."""

    position: int
    x: torch.Tensor | None  # (3, res, res) (or (3, H, W) of a bucket) uint8 pixels; None: skipped
    row: dict[str, Any]  # index row: key, label, caption, orig size, crop box, status, reason
    origin: str  # the file / dataset row, for error messages

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"


def skipped_row(key: str, label: int, caption: str | None, reason: str) -> dict[str, Any]:
    """Index row of a sample that could not be used."""
    return {
        "key": key,
        "label": int(label),
        "caption": caption,
        "orig_width": None,
        "orig_height": None,
        "crop_box": None,
        "status": "skipped",
        "reason": reason,
    }


class PreparedSource(Dataset):
    """`dataset[position] -> PreparedSample` for `source` at resolution `res` (ADM crop), or at
    `size` = (W, H) pixels (an aspect-ratio bucket: `cover_center_crop`)."""

    def __init__(
        self,
        source: ImageSource,
        res: int,
        *,
        min_side: int = MIN_IMAGE_SIDE,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.source, self.res, self.min_side, self.size = source, res, min_side, size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, pos: int) -> PreparedSample:
        try:
            record = self.source[pos]
        except Exception as exc:
            where = f"{self.source.source_id} position {pos}"
            reason = safe_text(f"unreadable: {type(exc).__name__}: {exc}")
            row = skipped_row(f"#{pos}", -1, None, reason)
            return PreparedSample(pos, None, row, where)
        try:
            prepared = prepare_image(
                open_image(record), self.res, min_side=self.min_side, size=self.size
            )
        except BadImageError as exc:
            row = skipped_row(record.key, record.label, record.caption, str(exc))
            return PreparedSample(pos, None, row, record.describe())
        w, h = prepared.orig_size
        row = {
            "key": record.key,
            "label": int(record.label),
            "caption": record.caption,
            "orig_width": w,
            "orig_height": h,
            "crop_box": list(prepared.crop_box),
            "status": "ok",
            "reason": None,
        }
        return PreparedSample(pos, prepared.pixels_CHW, row, record.describe())


class ImageSizes(Dataset):
    """`dataset[position] -> (width, height)` of the image after EXIF orientation, read from the
    header (no decode), or None when it cannot be opened: the bucket pre-pass of `lplkit encode
    --buckets` (the encode itself records why such an image is skipped)."""

    def __init__(self, source: ImageSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, pos: int) -> tuple[int, int] | None:
        try:
            img = open_image(self.source[pos])
            size = oriented_size(img)
            img.close()
        except Exception:
            return None
        return size if min(size) > 0 else None


def collate_prepared(
    samples: list[PreparedSample],
) -> tuple[list[PreparedSample], torch.Tensor | None]:
    """DataLoader collate: the samples (their rows) plus the stacked uint8 pixels of the ok ones."""
    xs = [s.x for s in samples if s.x is not None]
    batch = torch.stack(xs) if xs else None
    for s in samples:
        s.x = None  # the stacked batch owns the pixels now
    return samples, batch
