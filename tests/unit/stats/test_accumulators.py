"""Mergeable accumulators vs numpy oracles (two-pass moments, exact quantiles)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lplkit.stats.accumulators import ChannelHistogram, ChannelMoments, gather_merge


def _numpy_two_pass(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population variance of a (B, C, ...) array, textbook two-pass."""
    flat = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(np.float64)
    mean = flat.sum(axis=1) / flat.shape[1]
    var = ((flat - mean[:, None]) ** 2).sum(axis=1) / flat.shape[1]
    return mean, var


def _data(seed: int, n: int = 40, c: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.01, 50.0, size=(1, c, 1, 1))
    offset = rng.uniform(
        -1e3, 1e3, size=(1, c, 1, 1)
    )  # large offset: the naive sum-of-squares trap
    return rng.standard_normal((n, c, 3, 4)) * scale + offset


def test_moments_merge_equals_two_pass_on_union() -> None:
    x = _data(0)
    acc = ChannelMoments.empty(5)
    for lo, hi in [(0, 7), (7, 8), (8, 30), (30, 40)]:  # uneven batches, incl. a single sample
        acc.update(torch.from_numpy(x[lo:hi]))
    mean, var = _numpy_two_pass(x)
    assert acc.count == 40 * 12
    np.testing.assert_allclose(acc.mean.numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(acc.var.numpy(), var, rtol=1e-10)
    np.testing.assert_allclose(acc.std.numpy(), np.sqrt(var), rtol=1e-10)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), split=st.integers(1, 39))
def test_moments_merge_a_b_equals_stats_of_a_plus_b(seed: int, split: int) -> None:
    x = _data(seed)
    a = ChannelMoments.of(torch.from_numpy(x[:split]))
    b = ChannelMoments.of(torch.from_numpy(x[split:]))
    merged = a.merge(b)
    mean, var = _numpy_two_pass(x)
    np.testing.assert_allclose(merged.mean.numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(merged.var.numpy(), var, rtol=1e-10)
    assert merged.count == x.shape[0] * 12


def test_moments_empty_is_merge_identity_and_flat_round_trip() -> None:
    x = torch.from_numpy(_data(3))
    a = ChannelMoments.of(x)
    for merged in (a.merge(ChannelMoments.empty(5)), ChannelMoments.empty(5).merge(a)):
        assert merged.count == a.count
        assert torch.equal(merged.mean, a.mean) and torch.equal(merged.m2, a.m2)
    back = a.from_flat(a.to_flat())
    assert back.count == a.count and torch.equal(back.m2, a.m2)
    with pytest.raises(ValueError, match="channels"):
        a.merge(ChannelMoments.empty(4))


def test_gather_merge_is_identity_without_process_group() -> None:
    a = ChannelMoments.of(torch.from_numpy(_data(4)))
    assert gather_merge(a) is a


@pytest.mark.parametrize("q", [0.0, 0.02, 0.5, 0.98, 1.0])
def test_histogram_quantile_within_one_bin_of_exact(q: float) -> None:
    rng = np.random.default_rng(1)
    # Skewed, heavy-tailed channels, like decoder activations after SiLU.
    x = np.stack(
        [
            rng.standard_normal((64, 8, 8)),
            rng.standard_t(3, (64, 8, 8)) * 4,
            rng.exponential(2.0, (64, 8, 8)),
        ],
        axis=1,
    )
    t = torch.from_numpy(x)
    hist = ChannelHistogram.from_pilot(t[:4], bins=256)  # pilot of 4 samples: tails outside range
    for lo in range(0, 64, 16):
        hist.update(t[lo : lo + 16])
    exact = np.quantile(np.moveaxis(x, 1, 0).reshape(3, -1), q, axis=1)
    approx = hist.quantile(q).numpy()
    # In range: one bin width; allow the 1/n rank-convention difference via one extra bin.
    np.testing.assert_array_less(np.abs(approx - exact), 2 * hist.bin_width.numpy() + 1e-12)
    assert int(hist.total[0]) == 64 * 64


def test_histogram_merge_equals_histogram_of_union_and_cdf_inverts_quantile() -> None:
    t = torch.from_numpy(_data(5, n=50, c=3))
    pilot = ChannelHistogram.from_pilot(t[:5], bins=128)
    a = ChannelHistogram.empty(pilot.lo, pilot.hi, bins=128).update(t[:20])
    b = ChannelHistogram.empty(pilot.lo, pilot.hi, bins=128).update(t[20:])
    whole = ChannelHistogram.empty(pilot.lo, pilot.hi, bins=128).update(t)
    merged = a.merge(b)
    assert torch.equal(merged.counts, whole.counts)
    assert torch.equal(merged.vmin, whole.vmin) and torch.equal(merged.vmax, whole.vmax)
    back = merged.from_flat(merged.to_flat())
    assert torch.equal(back.counts, merged.counts)
    for q in (0.02, 0.3, 0.98):
        np.testing.assert_allclose(merged.cdf(merged.quantile(q)).numpy(), q, atol=1e-9)
    other = ChannelHistogram.empty(pilot.lo + 1, pilot.hi + 1, bins=128)
    with pytest.raises(ValueError, match="bin edges"):
        merged.merge(other)


def test_histogram_counts_match_numpy_histogram() -> None:
    rng = np.random.default_rng(7)
    x = rng.uniform(-2, 2, size=(30, 2, 5, 5))
    lo, hi = np.array([-1.0, 0.0]), np.array([1.0, 1.5])
    hist = ChannelHistogram.empty(torch.from_numpy(lo), torch.from_numpy(hi), bins=10)
    hist.update(torch.from_numpy(x))
    for c in range(2):
        values = x[:, c].ravel()
        inner, _ = np.histogram(
            values[(values >= lo[c]) & (values < hi[c])], bins=10, range=(lo[c], hi[c])
        )
        expected = [int((values < lo[c]).sum()), *inner.tolist(), int((values >= hi[c]).sum())]
        assert hist.counts[c].tolist() == expected
        assert float(hist.vmin[c]) == values.min() and float(hist.vmax[c]) == values.max()
