"""A grid of images of several sizes: one row per size, each image centred in the largest cell."""

from __future__ import annotations

import numpy as np
import pytest

from lplkit.diffusion.image_files import make_mixed_grid
from lplkit.errors import ConfigError


def test_rows_per_size_and_centred_tiles_by_hand():
    wide = np.full((3, 2, 4, 3), 10, np.uint8)  # three 2x4 (h x w) images
    tall = np.full((1, 4, 2, 3), 20, np.uint8)  # one 4x2 image
    grid = make_mixed_grid([wide, tall], nrow=2, padding=1)
    # cells 4x4; wide: 3 images on 2 rows of 2, tall: a row of its own -> 3 rows, 2 columns
    assert grid.shape == (3 * 5 + 1, 2 * 5 + 1, 3)
    want = np.zeros_like(grid)
    for k in range(3):  # wide tiles centred vertically: rows 1..2 of their 4-row cell
        r, q = divmod(k, 2)
        want[1 + r * 5 + 1 : 1 + r * 5 + 3, 1 + q * 5 : 1 + q * 5 + 4] = 10
    want[1 + 2 * 5 : 1 + 2 * 5 + 4, 1 + 1 : 1 + 3] = 20  # tall tile centred horizontally
    assert np.array_equal(grid, want)


def test_mixed_channel_counts_are_refused():
    with pytest.raises(ConfigError, match="same channel count"):
        make_mixed_grid([np.zeros((1, 2, 2, 3), np.uint8), np.zeros((1, 2, 2, 1), np.uint8)])
