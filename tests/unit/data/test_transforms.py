"""ADM crop vs a reference written here from guided-diffusion's definition; RGB conversion per mode."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from lplkit.data.transforms import (
    adm_center_crop,
    hflip,
    load_checked,
    prepare_image,
    to_rgb,
    to_tensor,
)
from lplkit.errors import BadImageError


def reference_center_crop_arr(pil_image: Image.Image, image_size: int):
    """guided-diffusion image_datasets.center_crop_arr, from its definition (+ the crop offsets)."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC
    )
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size], (crop_x, crop_y)


def _random_rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("w", "h", "res"),
    [
        (64, 64, 32),  # exactly 2x: one BOX halving, then a no-op bicubic
        (65, 47, 32),  # odd sizes, no halving
        (300, 200, 32),  # several halvings
        (33, 100, 32),  # portrait, upscale-free
        (20, 30, 32),  # smaller than res: bicubic upscale
        (257, 255, 64),
        (31, 31, 16),
    ],
)
def test_adm_center_crop_matches_guided_diffusion(w, h, res):
    img = _random_rgb(w, h, seed=w * 1000 + h)
    expected, (cx, cy) = reference_center_crop_arr(img, res)
    out, box = adm_center_crop(img, res)
    assert out.size == (res, res)
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert box == (cx, cy, cx + res, cy + res)


def test_to_tensor_range_and_layout():
    arr = np.zeros((2, 3, 3), np.uint8)
    arr[0, 0] = (0, 255, 51)
    x = to_tensor(Image.fromarray(arr))
    assert x.shape == (3, 2, 3) and x.dtype == torch.float32
    assert x[:, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1.0])
    assert x[:, 1, 2].tolist() == pytest.approx([-1.0, -1.0, -1.0])


def test_hflip_reverses_width():
    x = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    assert torch.equal(hflip(x), torch.from_numpy(x.numpy()[..., ::-1].copy()))


# -- RGB conversion of each mode ----------------------------------------------------------------


def test_grayscale_and_one_bit():
    gray = Image.fromarray(np.array([[0, 100, 255]], np.uint8), mode="L")
    assert np.asarray(to_rgb(gray)).tolist() == [[[0] * 3, [100] * 3, [255] * 3]]
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    assert np.asarray(to_rgb(bits)).tolist() == [[[0] * 3, [255] * 3]]


def test_rgba_composited_on_white():
    arr = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128]]], np.uint8)
    out = np.asarray(to_rgb(Image.fromarray(arr, mode="RGBA"))).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white, not black
    assert out[0, 1].tolist() == [10, 20, 30]
    a = 128 / 255  # over white: c * a + 255 * (1 - a)
    np.testing.assert_allclose(out[0, 2], [255 * (1 - a)] * 3, atol=1)


def test_la_composited_on_white():
    arr = np.array([[[50, 0], [50, 255]]], np.uint8)
    out = np.asarray(to_rgb(Image.fromarray(arr, mode="LA")))
    assert out.tolist() == [[[255] * 3, [50] * 3]]


def test_palette_with_and_without_transparency():
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (768 - 9))
    pal.putdata([0, 1, 2])
    assert np.asarray(to_rgb(pal)).tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]
    buf = io.BytesIO()
    pal.save(buf, format="PNG", transparency=1)  # index 1 (green) is transparent
    reopened = Image.open(io.BytesIO(buf.getvalue()))
    assert reopened.mode == "P" and "transparency" in reopened.info
    assert np.asarray(to_rgb(reopened)).tolist() == [[[255, 0, 0], [255, 255, 255], [0, 0, 255]]]


def test_cmyk():
    arr = np.array([[[0, 0, 0, 0], [0, 0, 0, 255], [255, 0, 0, 0]]], np.uint8)
    out = np.asarray(to_rgb(Image.fromarray(arr, mode="CMYK")))
    assert out.tolist() == [[[255, 255, 255], [0, 0, 0], [0, 255, 255]]]


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 1000, 65535]], np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = np.asarray(to_rgb(img))[0, :, 0]
    assert out.tolist() == [0, 100, round(1000 / 257), 255]
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # a real 16-bit PNG round trip
    out_png = np.asarray(to_rgb(Image.open(io.BytesIO(buf.getvalue()))))[0, :, 0]
    assert out_png.tolist() == [0, 100, 4, 255]


def test_int32_and_float_modes():
    i32 = Image.fromarray(np.array([[0, 65535, 70000, -5]], np.int32), mode="I")
    assert np.asarray(to_rgb(i32))[0, :, 0].tolist() == [0, 255, 255, 0]
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), mode="F")
    assert np.asarray(to_rgb(f01))[0, :, 0].tolist() == [0, 128, 255]


# -- decode checks -------------------------------------------------------------------------------


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_exif_orientation_applied():
    arr = np.random.default_rng(0).integers(0, 256, (10, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img = Image.open(io.BytesIO(_png_bytes(Image.fromarray(arr), exif=exif)))
    out = np.asarray(load_checked(img))
    np.testing.assert_array_equal(out, np.rot90(arr, k=-1))


def test_truncated_image_rejected():
    data = _png_bytes(_random_rgb(64, 64))
    img = Image.open(io.BytesIO(data[: len(data) // 2]))
    with pytest.raises(BadImageError, match="truncated or corrupt"):
        load_checked(img)


def test_too_small_rejected():
    with pytest.raises(BadImageError, match="too small: 7x20"):
        load_checked(_random_rgb(7, 20))
    assert load_checked(_random_rgb(8, 20)).size == (8, 20)


def test_decompression_bomb_rejected(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_checked(_random_rgb(11, 10))
    assert load_checked(_random_rgb(10, 10)).size == (10, 10)


def test_prepare_image_end_to_end():
    img = _random_rgb(50, 40, seed=3)
    expected, (cx, cy) = reference_center_crop_arr(img, 32)
    p = prepare_image(img, 32)
    assert p.orig_size == (50, 40) and p.crop_box == (cx, cy, cx + 32, cy + 32)
    np.testing.assert_allclose(p.x_CHW.permute(1, 2, 0).numpy(), expected / 127.5 - 1.0, atol=1e-6)
