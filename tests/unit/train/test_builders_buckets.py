"""Model sizing for bucketed stores: the square side each model family is built with, by hand."""

from __future__ import annotations

from types import SimpleNamespace

from lplkit.train.builders import bucketed_sample_size, default_latent_shape

GRIDS = [(16, 8), (8, 16), (12, 12)]


def test_sample_size_per_family():
    # interpolated positions (DiT, PixArt) and U-Nets: isqrt(max area 144) = 12 -> down to 8
    assert bucketed_sample_size("DiT-T/2", GRIDS) == 8
    assert bucketed_sample_size("PixArt-S/2", [(32, 24), (24, 32)]) == 24  # isqrt(768) = 27
    # MMDiT crops a table of sample_size / 2 patches: the longest side, up to a multiple of 8
    assert bucketed_sample_size("MMDiT-T/2", GRIDS) == 16
    assert bucketed_sample_size("MMDiT-T/2", [(20, 6)]) == 24


def test_default_shape_is_the_bucket_with_most_rows():
    def b(i, shape, rows):
        return SimpleNamespace(id=i, latent_shape=shape, rows=rows)

    store = SimpleNamespace(buckets=[b(0, (4, 16, 8), 5), b(1, (4, 8, 16), 9), b(2, (4, 8, 8), 9)])
    assert default_latent_shape(store) == (4, 8, 8)  # ties: the squarest
    store.buckets[2] = b(2, (4, 16, 8), 9)
    assert default_latent_shape(store) == (4, 8, 16)  # then the lowest id
