"""Aspect-ratio bucket lists and assignment (issue #25), against direct computations: the nearest
bucket by log-aspect distance computed with floats and a tolerance for ties, the SDXL table scaled
by hand, kohya's area rule worked out by hand for res 256 / step 64."""

from __future__ import annotations

import math

import pytest

from lplkit.errors import ConfigError
from lplkit.store.buckets import SDXL_BUCKETS, assign_bucket, bucket_sizes, parse_size

TIE = 1e-12


def nearest(sizes, w, h):
    """The oracle: argmin |log(W/H) - log(w/h)| in floats; near-ties (within TIE) go to the bucket
    with the smaller |log(W/H)|, then the lower index."""
    a = math.log(w) - math.log(h)
    d = [abs(math.log(W) - math.log(H) - a) for W, H in sizes]
    best = min(d)
    tied = [k for k in range(len(sizes)) if d[k] - best <= TIE]
    sq = [abs(math.log(sizes[k][0]) - math.log(sizes[k][1])) for k in tied]
    return tied[min(range(len(tied)), key=lambda i: (sq[i] - min(sq) > TIE, i))]


@pytest.mark.parametrize(
    "sizes",
    [
        bucket_sizes("sdxl", 256, multiple=16),
        bucket_sizes("area", 256, step=64, max_aspect=4, multiple=16),
        # exact ties: 300x200 (1.5) is as far from 2:1 as from 9:8 (ratio 4/3 each way); a square
        # image as far from 2:1 as from 1:2
        [(64, 128), (72, 64), (128, 64)],
    ],
    ids=["sdxl", "area", "ties"],
)
def test_assignment_equals_the_nearest_log_aspect(sizes):
    grid = [(w, h) for w in range(8, 420, 7) for h in range(8, 420, 11)]
    grid += [(300, 200), (200, 300), (50, 50), (1, 1), (4000, 1000), (1000, 4000)]
    for w, h in grid:
        assert assign_bucket(sizes, w, h) == nearest(sizes, w, h), (w, h)


def test_ties_go_to_the_squarer_bucket():
    sizes = [(64, 128), (72, 64), (128, 64)]
    assert assign_bucket(sizes, 300, 200) == 1  # 9:8 is squarer than 2:1
    assert assign_bucket(sizes, 50, 50) == 1
    assert assign_bucket([(64, 128), (128, 64)], 50, 50) == 0  # equally square: the lower index


def test_sdxl_list_scaled_to_res():
    # at 1024 px it is the published table itself, sorted by aspect (tall first)
    assert bucket_sizes("sdxl", 1024, multiple=64) == sorted(
        SDXL_BUCKETS, key=lambda s: s[0] / s[1]
    )
    assert len(SDXL_BUCKETS) == 41 and (1024, 1024) in SDXL_BUCKETS
    # at 256 px every side is a quarter (the table's sides are multiples of 64 -> of 16)
    quarter = sorted(((w // 4, h // 4) for w, h in SDXL_BUCKETS), key=lambda s: s[0] / s[1])
    assert bucket_sizes("sdxl", 256, multiple=16) == quarter
    for w, h in quarter:
        assert 0.9 * 256**2 <= w * h <= 1.0 * 256**2
    # rounding to a coarser multiple merges neighbours, never yields a non-multiple
    coarse = bucket_sizes("sdxl", 256, multiple=64)
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in coarse) and len(set(coarse)) == len(coarse)


def test_area_rule_by_hand():
    # kohya's rule at res 256, step 64, max aspect 4: for each width the tallest height within
    # 256^2 px, both orientations, aspect <= 4 (worked out by hand)
    assert bucket_sizes("area", 256, step=64, max_aspect=4, multiple=16) == [
        (128, 512), (128, 448), (128, 384), (192, 320), (256, 256),
        (320, 192), (384, 128), (448, 128), (512, 128),
    ]  # fmt: skip
    assert bucket_sizes("area", 256, step=64, max_aspect=2, multiple=16) == [
        (192, 320),
        (256, 256),
        (320, 192),
    ]


def test_explicit_list_and_refusals():
    assert bucket_sizes("384x192,256x256,192x384", 256, multiple=16) == [
        (192, 384),
        (256, 256),
        (384, 192),
    ]
    with pytest.raises(ConfigError, match="bucket 200x256 is not a multiple of 16"):
        bucket_sizes("200x256,256x256", 256, multiple=16)
    with pytest.raises(ConfigError, match="--bucket-step 24 is not a multiple of 16"):
        bucket_sizes("area", 256, step=24, multiple=16)
    with pytest.raises(ConfigError, match="not WIDTHxHEIGHT"):
        parse_size("256by256")
