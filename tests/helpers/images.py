"""Generated image folders and the reference crop of guided-diffusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image_folder(
    root: Path, classes: dict[str, int], *, seed: int = 0, size=(48, 40)
) -> Path:
    """Class sub-folders of random RGB PNG/JPEG images of varied sizes; returns `root`."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cname, count in classes.items():
        (root / cname).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            w = int(size[0] + rng.integers(0, 24))
            h = int(size[1] + rng.integers(0, 24))
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            ext = "png" if i % 2 == 0 else "jpg"
            Image.fromarray(arr).save(root / cname / f"img_{i:03d}.{ext}")
    return root


def reference_crop(img: Image.Image, res: int) -> np.ndarray:
    """guided-diffusion center_crop_arr, written from its definition."""
    while min(*img.size) >= 2 * res:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = res / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.array(img)
    y, x = (arr.shape[0] - res) // 2, (arr.shape[1] - res) // 2
    return arr[y : y + res, x : x + res]
