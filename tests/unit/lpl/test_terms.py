"""Per-layer LPL math against numpy loops written here (independent of lplkit's code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lplkit.lpl.decoder_taps import FeatureStats, LayerInfo
from lplkit.lpl.terms import (
    inlier_mask,
    layer_distance,
    layer_weights,
    morphology_sizes,
    normalize_pair,
)

EPS = 1e-6


def np_inlier_mask(y, q=0.02, mult=2.0, dilate=1, erode=1, stats=None):
    """Loops: order statistics by sorting, ddof=1 std, then window max / window min in the image."""
    b_, c_, h, w = y.shape
    mask = np.zeros_like(y)
    for b in range(b_):
        for c in range(c_):
            v = y[b, c].ravel()
            if stats is None:
                s = np.sort(v)
                n = v.size
                q1, q2 = s[max(1, int(n * q)) - 1], s[int(n * (1 - q)) - 1]
                m = mult * v.std(ddof=1)
            else:
                q1, q2, m = stats["q_low"][c], stats["q_high"][c], mult * stats["std"][c]
            mask[b, c] = (y[b, c] > q1 - m) & (y[b, c] < q2 + m)

    def window(arr, k, fn):
        r = (k - 1) // 2
        out = np.empty_like(arr)
        for i in range(h):
            for j in range(w):
                win = arr[:, :, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
                out[:, :, i, j] = fn(win, axis=(2, 3))
        return out

    mask = window(mask, dilate, np.max)
    return window(mask, erode, np.min)


def features_with_outliers(seed=0, shape=(2, 3, 24, 24)):
    """Normal features plus spikes/blobs smaller than 2% of the 576 positions (true outliers)."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=shape)
    y[0, 0, 3, 4] = 12.0  # isolated spike
    y[0, 1, 5:8, 2:5] = -9.0  # a 3x3 blob (survives a dilation 3 + erosion 5)
    y[1, 2, 0, 0] = 15.0  # a corner spike (border handling)
    y[1, 0, 20:22, 7:9] = 11.0  # 2x2 blob
    return y


def test_morphology_sizes_match_reference_rules():
    # reference: closing = ceil(3/d) (2 -> 1), opening = ceil(5/d) (2 -> 3)
    assert morphology_sizes(1) == (3, 5)
    assert morphology_sizes(2) == (1, 3)
    assert morphology_sizes(3) == (1, 3)
    assert morphology_sizes(4) == (1, 3)
    assert morphology_sizes(8) == (1, 1)


@pytest.mark.parametrize(("dilate", "erode"), [(1, 1), (1, 3), (3, 5), (3, 1)])
def test_inlier_mask_matches_numpy_loops(dilate, erode):
    y = features_with_outliers()
    got = inlier_mask(torch.from_numpy(y), dilate=dilate, erode=erode).numpy()
    want = np_inlier_mask(y, dilate=dilate, erode=erode)
    np.testing.assert_array_equal(got, want)
    if (dilate, erode) == (1, 1):
        assert got[0, 0, 3, 4] == 0 and got[0, 1, 6, 3] == 0 and got[1, 2, 0, 0] == 0
        assert 0.95 < got.mean() < 1.0
    if (dilate, erode) == (3, 5):  # spikes closed; the 3x3 blob's center grows to 5x5
        assert got[0, 0, 3, 4] == 1 and got[1, 2, 0, 0] == 1
        assert got[0, 1, 4:9, 1:6].sum() == 0 and got[0, 1].sum() == 576 - 25


def test_inlier_mask_with_dataset_stats():
    y = features_with_outliers(1)
    stats = {"q_low": np.array([-1.0, -0.5, -2.0]), "q_high": np.array([1.0, 0.5, 2.0])}
    stats["std"] = np.array([0.5, 0.25, 1.0])
    t = torch.from_numpy
    fs = FeatureStats(
        torch.zeros(3, dtype=torch.float64), t(stats["std"]), t(stats["q_low"]), t(stats["q_high"])
    )
    got = inlier_mask(torch.from_numpy(y), dilate=1, erode=3, stats=fs).numpy()
    np.testing.assert_array_equal(got, np_inlier_mask(y, dilate=1, erode=3, stats=stats))


def np_normalize(x, y, mask, norm, source="pred", stats=None):
    if mask is not None:
        x, y = x * mask, y * mask
    if norm == "none":
        return x, y
    out_x, out_y = np.empty_like(x), np.empty_like(y)
    b_, c_, h, w = x.shape
    for b in range(b_):
        for i in range(h):
            for j in range(w):
                nx = np.sqrt(np.sum(x[b, :, i, j] ** 2)) + EPS
                ny = np.sqrt(np.sum(y[b, :, i, j] ** 2)) + EPS
                if norm == "l2":
                    out_x[b, :, i, j], out_y[b, :, i, j] = x[b, :, i, j] / nx, y[b, :, i, j] / ny
                elif norm == "l2-shared":
                    out_x[b, :, i, j], out_y[b, :, i, j] = x[b, :, i, j] / ny, y[b, :, i, j] / ny
    if norm in ("l2", "l2-shared"):
        return out_x, out_y
    for b in range(b_):
        for c in range(c_):
            if norm == "dataset":
                mu, var = stats["mean"][c], stats["std"][c] ** 2
            else:
                s = (x if source == "pred" else y)[b, c]
                wts = np.ones_like(s) if mask is None else mask[b, c]
                sel = s[wts > 0]
                mu, var = sel.mean(), sel.var()  # ddof=0 over the inliers
            out_x[b, c] = (x[b, c] - mu) / np.sqrt(var + EPS)
            out_y[b, c] = (y[b, c] - mu) / np.sqrt(var + EPS)
    return out_x, out_y


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize(
    ("norm", "source"),
    [
        ("none", "pred"),
        ("l2", "pred"),
        ("l2-shared", "pred"),
        ("standardize-shared", "pred"),
        ("standardize-shared", "target"),
        ("dataset", "pred"),
    ],
)
def test_normalize_pair_matches_numpy(norm, source, masked):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2, 3, 5, 4)) * 2 + 1, rng.normal(size=(2, 3, 5, 4))
    mask = (rng.random(size=x.shape) > 0.2).astype(np.float64) if masked else None
    stats = {"mean": np.array([0.5, -1.0, 2.0]), "std": np.array([2.0, 0.5, 1.5])}
    fs = FeatureStats(
        torch.from_numpy(stats["mean"]),
        torch.from_numpy(stats["std"]),
        torch.zeros(3, dtype=torch.float64),
        torch.zeros(3, dtype=torch.float64),
    )
    t = torch.from_numpy
    gx, gy = normalize_pair(
        t(x),
        t(y),
        None if mask is None else t(mask),
        norm,
        eps=EPS,
        standardize_stats=source,
        stats=fs,
    )
    wx, wy = np_normalize(x, y, mask, norm, source, stats)
    np.testing.assert_allclose(gx.numpy(), wx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gy.numpy(), wy, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("distance", ["mse", "l1"])
@pytest.mark.parametrize("masked", [False, True])
def test_layer_distance_is_masked_spatial_mean_then_channel_mean(distance, masked):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 4, 5))
    mask = (rng.random(size=x.shape) > 0.3).astype(np.float64) if masked else np.ones_like(x)
    mask[1, 2] = 0.0 if masked else 1.0  # a fully masked channel contributes 0
    want = np.zeros(2)
    for b in range(2):
        for c in range(3):
            num = den = 0.0
            for i in range(4):
                for j in range(5):
                    d = x[b, c, i, j] - y[b, c, i, j]
                    num += mask[b, c, i, j] * (d * d if distance == "mse" else abs(d))
                    den += mask[b, c, i, j]
            want[b] += (num / den if den else 0.0) / 3
    t = torch.from_numpy
    got = layer_distance(t(x), t(y), t(mask) if masked else None, distance)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_layer_weights_by_hand():
    sd = [LayerInfo("m", 512, 1), LayerInfo("u0", 512, 2), LayerInfo("u1", 512, 4)]
    sd += [LayerInfo("u2", 256, 8), LayerInfo("u3", 128, 8)]
    assert layer_weights("uniform", sd) == [1.0] * 5
    assert layer_weights("pow2", sd) == [1.0, 0.5, 0.25, 0.125, 0.125]
    assert layer_weights("upsampling", sd) == [1.0, 0.5, 0.25, 0.125, 0.125]
    dc = [LayerInfo("a", 32, 1), LayerInfo("b", 16, 2), LayerInfo("c", 8, 4), LayerInfo("d", 8, 8)]
    dc.append(LayerInfo("e", 4, 16))
    assert layer_weights("upsampling", dc) == [1.0, 0.5, 0.25, 0.125, 0.0625]
    assert layer_weights("pow2", dc) == [1.0, 0.5, 0.25, 0.125, 0.125]
