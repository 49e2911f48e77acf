"""Image preprocessing for encoding: decode checks, RGB conversion, ADM center crop, [-1, 1] tensors.

The crop is guided-diffusion's `center_crop_arr` (ADM, Dhariwal & Nichol 2021), which every
ImageNet latent-diffusion baseline (DiT, SiT, REPA, LightningDiT, EDM2) uses:

1. while min(w, h) >= 2 * res: halve both sides with BOX filtering (w, h <- w // 2, h // 2);
2. scale s = res / min(w, h); BICUBIC resize to (round(w * s), round(h * s));
3. crop the res x res window at top-left ((W - res) // 2, (H - res) // 2) of the resized image.

The work of step 2 grows with the *resized* image, res^2 * (long side / short side), not with the
source: a 500000 x 8 strip (4 Mpx, 12 KB as PNG) would be resized to 16000000 x 256 at res 256.
`prepare_image` therefore refuses (skips, with a reason) an image whose resized size exceeds
`PIL.Image.MAX_IMAGE_PIXELS`, the same bound PIL puts on the decoded source, before decoding it.

Pixels are then mapped to x = p / 127.5 - 1 in [-1, 1] (CHW float32); the encoder pipeline moves
them as uint8 and converts on the autoencoder's device (`to_unit_range`), bit-identical to the CPU. A horizontal flip is applied
to the *cropped* image, like ADM's training-time `random_flip`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps

from lplkit.errors import BadImageError

__all__ = [
    "MIN_IMAGE_SIDE",
    "CropBox",
    "PreparedImage",
    "adm_center_crop",
    "adm_resized_size",
    "check_resize_work",
    "cover_center_crop",
    "cover_resized_size",
    "hflip",
    "load_checked",
    "oriented_size",
    "prepare_image",
    "to_pixels",
    "to_rgb",
    "to_tensor",
    "to_unit_range",
]

#: Images with a side shorter than this (in pixels) are skipped as "too small".
MIN_IMAGE_SIDE = 8

#: (left, top, right, bottom) of the crop window in the resized image.
CropBox = tuple[int, int, int, int]

# Modes whose alpha must be composited on the background rather than dropped.
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# 16/32-bit integer modes: scaled from the 16-bit range to 8 bits (PIL's convert() clips instead).
_WIDE_INT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert an image of any PIL mode to 8-bit RGB.

    - transparency (RGBA, LA, P/L/RGB with a `transparency` key, PA) is alpha-composited on
      `background` (white by default), so transparent pixels do not turn black;
    - 16-bit and 32-bit integer grayscale (I;16*, I) is scaled as p8 = round(p16 / 257) after
      clipping to [0, 65535] (PIL's own conversion clips everything above 255 to white);
    - float grayscale (F) is taken as [0, 1] when its max <= 1, else as [0, 255], and clipped;
    - 1-bit, L, CMYK, YCbCr and the rest go through PIL's `convert("RGB")`.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_INT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        arr8 = np.clip(np.rint(np.clip(arr, 0, 65535) / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 1.0
        arr8 = np.clip(np.rint(np.nan_to_num(arr) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    has_alpha = mode in _ALPHA_MODES or "transparency" in img.info
    if mode == "P" and img.palette is not None and img.palette.mode == "RGBA":
        has_alpha = True
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def load_checked(img: Image.Image, *, min_side: int = MIN_IMAGE_SIDE) -> Image.Image:
    """Fully decode a lazily opened image, apply its EXIF orientation and convert it to RGB.

    Raises:
        BadImageError: with a short reason ("decompression bomb: ...", "truncated or corrupt: ...",
            "too small: ...") — the caller adds the file name.
    """
    w, h = img.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise BadImageError(
            f"decompression bomb: {w}x{h} = {w * h} px > PIL.Image.MAX_IMAGE_PIXELS = {limit}"
        )
    if min(w, h) < min_side:
        raise BadImageError(f"too small: {w}x{h} px, the short side must be >= {min_side} px")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone flipped the global; truncation must not pass
        raise BadImageError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"truncated or corrupt: {exc}") from None


def adm_resized_size(size: tuple[int, int], res: int) -> tuple[int, int]:
    """(width, height) that `adm_center_crop` resizes an image of `size` to (steps 1 and 2 of the
    module docstring), computed without touching pixels."""
    w, h = size
    while min(w, h) >= 2 * res:
        w, h = w // 2, h // 2
    scale = res / min(w, h)
    return round(w * scale), round(h * scale)


def cover_resized_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) that `cover_center_crop` resizes an image of `size` to for a `target` =
    (W, H) crop: ADM's rule (module docstring) with a W x H window instead of res x res:

    1. while w >= 2W and h >= 2H: w, h <- w // 2, h // 2 (BOX);
    2. s = max(W / w, H / h) (the smallest scale whose image covers the window: never a stretch);
       resize to (max(W, round(w * s)), max(H, round(h * s))).

    For W = H = res this is `adm_resized_size`."""
    (w, h), (tw, th) = size, target
    while w >= 2 * tw and h >= 2 * th:
        w, h = w // 2, h // 2
    scale = max(tw / w, th / h)
    return max(tw, round(w * scale)), max(th, round(h * scale))


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) of a lazily opened image after its EXIF orientation (what `load_checked`
    returns), read from the header without decoding the pixels."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112)
    except Exception:  # a damaged EXIF block: the decode reports the image, if anything
        orientation = None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_resize_work(
    size: tuple[int, int], res: int, target: tuple[int, int] | None = None
) -> None:
    """`BadImageError` when resizing an image of `size` for `res` (or a `target` (W, H) bucket)
    would produce more pixels than `PIL.Image.MAX_IMAGE_PIXELS` (None: no bound), e.g. an
    extremely wide strip whose short side is scaled up to `res`."""
    limit = Image.MAX_IMAGE_PIXELS
    rw, rh = adm_resized_size(size, res) if target is None else cover_resized_size(size, target)
    if limit is not None and rw * rh > limit:
        raise BadImageError(
            f"resize too large: {size[0]}x{size[1]} px would be resized to {rw}x{rh} = {rw * rh} px "
            f"for --res {res} (> PIL.Image.MAX_IMAGE_PIXELS = {limit}); extreme aspect ratio"
        )


def adm_center_crop(img: Image.Image, res: int) -> tuple[Image.Image, CropBox]:
    """guided-diffusion's `center_crop_arr`, returning the crop and its box in the resized image.

    Equations in the module docstring. The input must be RGB (or any single-layer mode PIL resizes).
    """
    if res <= 0:
        raise ValueError(f"resolution must be positive, got {res}")
    while min(*img.size) >= 2 * res:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.Resampling.BOX)
    size = adm_resized_size(img.size, res)
    img = img.resize(size, resample=Image.Resampling.BICUBIC)
    left = (img.size[0] - res) // 2
    top = (img.size[1] - res) // 2
    box = (left, top, left + res, top + res)
    return img.crop(box), box


def cover_center_crop(img: Image.Image, target: tuple[int, int]) -> tuple[Image.Image, CropBox]:
    """Resize `img` (RGB) to cover a `target` = (W, H) window keeping its aspect ratio, then crop
    the window at the center: the aspect-ratio bucket crop (equations: `cover_resized_size`; the
    window's top-left is ((w' - W) // 2, (h' - H) // 2) in the resized w' x h' image). For a
    square target it equals `adm_center_crop`."""
    tw, th = target
    if tw <= 0 or th <= 0:
        raise ValueError(f"crop size must be positive, got {target}")
    while img.size[0] >= 2 * tw and img.size[1] >= 2 * th:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.Resampling.BOX)
    img = img.resize(cover_resized_size(img.size, target), resample=Image.Resampling.BICUBIC)
    left = (img.size[0] - tw) // 2
    top = (img.size[1] - th) // 2
    box = (left, top, left + tw, top + th)
    return img.crop(box), box


def to_pixels(img: Image.Image) -> torch.Tensor:
    """RGB image -> uint8 CHW tensor (4x smaller than float32 to move between processes/devices)."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {arr.shape}")
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels p (any device, any shape) -> float32 x = p / 127.5 - 1 in [-1, 1]."""
    if pixels.dtype != torch.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return pixels.to(torch.float32).div_(127.5).sub_(1.0)  # a new tensor: in place is safe


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB uint8 HWC -> float32 CHW in [-1, 1]: x = p / 127.5 - 1."""
    return to_unit_range(to_pixels(img))


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of a (..., H, W) tensor (the last axis is width)."""
    return torch.flip(x, dims=(-1,))


@dataclass(frozen=True)
class PreparedImage:
    """One decoded, cropped image ready for the autoencoder."""

    pixels_CHW: torch.Tensor  # uint8, res x res (or H x W of a bucket size)
    orig_size: tuple[int, int]  # (width, height) after EXIF orientation, before any resize
    crop_box: CropBox

    @property
    def x_CHW(self) -> torch.Tensor:
        """float32 in [-1, 1]."""
        return to_unit_range(self.pixels_CHW)


def prepare_image(
    img: Image.Image,
    res: int,
    *,
    min_side: int = MIN_IMAGE_SIDE,
    size: tuple[int, int] | None = None,
) -> PreparedImage:
    """Decode check + EXIF + RGB + ADM crop (or, with `size` = (W, H), the bucket crop
    `cover_center_crop`) + uint8 tensor (what a DataLoader worker runs)."""
    if min(img.size) >= min_side:  # a smaller one is "too small" (load_checked)
        try:  # before decoding: the size is in the header
            check_resize_work(img.size if size is None else oriented_size(img), res, size)
        except BadImageError:
            img.close()  # never decoded: release the file now
            raise
    rgb = load_checked(img, min_side=min_side)
    cropped, box = adm_center_crop(rgb, res) if size is None else cover_center_crop(rgb, size)
    return PreparedImage(to_pixels(cropped), rgb.size, box)
