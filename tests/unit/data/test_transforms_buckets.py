"""The bucket crop (`cover_center_crop`, issue #25): a non-square image is never stretched.

Oracle: PIL's resize + crop written out here from the rule (halve with BOX while both sides are at
least twice the target, scale by max(W/w, H/h) with BICUBIC, crop the centered W x H window), and
guided-diffusion's crop (helpers.images.reference_crop) for square targets.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.images import reference_crop
from PIL import Image

from lplkit.data.prepared import ImageSizes, PreparedSource
from lplkit.data.sources import Record
from lplkit.data.transforms import cover_center_crop, prepare_image


def pil_resize_crop(img: Image.Image, target: tuple[int, int]) -> np.ndarray:
    W, H = target
    while img.size[0] >= 2 * W and img.size[1] >= 2 * H:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    s = max(W / img.size[0], H / img.size[1])
    img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), resample=Image.BICUBIC)
    left, top = (img.size[0] - W) // 2, (img.size[1] - H) // 2
    return np.asarray(img.crop((left, top, left + W, top + H)))


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


SIZES = [(96, 48), (48, 96), (64, 64), (80, 48)]
IMAGES = [(200, 90), (90, 200), (64, 64), (500, 260), (37, 111), (1000, 300), (120, 120)]


@pytest.mark.parametrize("target", SIZES)
@pytest.mark.parametrize("size", IMAGES)
def test_cover_crop_equals_pil_resize_and_crop(size, target):
    img = _image(*size)
    crop, box = cover_center_crop(img, target)
    assert crop.size == target and box[2] - box[0] == target[0] and box[3] - box[1] == target[1]
    np.testing.assert_array_equal(np.asarray(crop), pil_resize_crop(img, target))


@pytest.mark.parametrize("size", IMAGES)
def test_square_target_is_the_adm_crop(size):
    img = _image(*size, seed=1)
    crop, _ = cover_center_crop(img, (64, 64))
    np.testing.assert_array_equal(np.asarray(crop), reference_crop(img, 64))


def test_no_stretch_and_prepared_sample_pixels(tmp_path):
    # a 2:1 image into a 1:2 bucket: scaled uniformly until it covers 48x96, the sides cut
    img = _image(200, 100, seed=2)
    crop, box = cover_center_crop(img, (48, 96))
    scale = 96 / 100  # the height decides: 200 * 0.96 = 192 wide, cut to 48
    assert box == ((192 - 48) // 2, 0, (192 - 48) // 2 + 48, 96)
    np.testing.assert_array_equal(np.asarray(crop), pil_resize_crop(img, (48, 96)))
    assert round(200 * scale) == 192
    # the DataLoader worker path: PreparedSource(size=...) gives the same CHW pixels
    path = tmp_path / "wide.png"
    img.save(path)

    class One:
        source_id = "one"

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return Record(key="wide.png", image=lambda: Image.open(path))

    sample = PreparedSource(One(), 64, size=(48, 96))[0]  # type: ignore[arg-type]
    assert sample.ok and sample.row["crop_box"] == list(box)
    np.testing.assert_array_equal(sample.x.permute(1, 2, 0).numpy(), pil_resize_crop(img, (48, 96)))
    assert ImageSizes(One())[0] == (200, 100)  # type: ignore[arg-type]
    prepared = prepare_image(Image.open(path), 64, size=(48, 96))
    assert prepared.orig_size == (200, 100)
