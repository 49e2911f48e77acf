"""SWD and Laplacian pyramids vs hand-written numpy oracles and known cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lplkit.metrics.pyramid import laplacian_pyramid, pyr_down, pyr_up, reconstruct
from lplkit.metrics.swd import (
    SWDConfig,
    SWDDescriptors,
    normalize_descriptors,
    pyramid_resolutions,
    sample_descriptors,
    sliced_wasserstein,
    swd_between,
)

SMALL = SWDConfig(nhoods_per_image=64, dirs_per_repeat=64, dir_repeats=2)


def _np_blur5(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """Explicit 5x5 loop over a mirror-padded image (the oracle for the torch conv)."""
    g = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16
    k = gain * np.outer(g, g)
    p = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    out = np.zeros_like(x, dtype=np.float64)
    for dy in range(5):
        for dx in range(5):
            out += k[dy, dx] * p[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]
    return out


def _smooth_images(n: int, seed: int, size: int = 64) -> torch.Tensor:
    """Blobby images with fine grain: bicubic-upsampled noise plus a little pixel noise."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=size, mode="bicubic")
    x = x + 0.15 * torch.rand(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round()


def _blur3(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    k = torch.outer(k, k) / 16
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), k.expand(3, 1, 3, 3), groups=3)


def _swd(a: torch.Tensor, b: torch.Tensor, cfg: SWDConfig = SMALL, seed_b: int = 0):
    da, db = SWDDescriptors(cfg, seed=0), SWDDescriptors(cfg, seed=seed_b)
    da.update(a)
    db.update(b)
    return swd_between(da.finalize(), db.finalize(), da.resolutions, cfg, seed=0)


def test_pyr_down_and_up_match_explicit_mirror_convolution():
    x = np.random.default_rng(0).uniform(0, 255, (2, 3, 16, 12))
    down = pyr_down(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(down, _np_blur5(x)[:, :, ::2, ::2], rtol=1e-12, atol=1e-9)
    small = x[:, :, :8, :6]
    zeros = np.zeros((2, 3, 16, 12))
    zeros[:, :, ::2, ::2] = small
    up = pyr_up(torch.from_numpy(small)).numpy()
    np.testing.assert_allclose(up, _np_blur5(zeros, gain=4.0), rtol=1e-12, atol=1e-9)


def test_laplacian_pyramid_reconstructs_exactly():
    x = torch.from_numpy(np.random.default_rng(1).uniform(0, 255, (3, 3, 64, 48)))
    pyr = laplacian_pyramid(x, 3)
    assert [tuple(p.shape[-2:]) for p in pyr] == [(64, 48), (32, 24), (16, 12)]
    assert pyr[0].dtype == torch.float64
    np.testing.assert_allclose(reconstruct(pyr).numpy(), x.numpy(), rtol=0, atol=1e-10)
    # the coarsest level is the twice-blurred-and-decimated image (oracle: the numpy loop)
    expected = _np_blur5(_np_blur5(x.numpy())[:, :, ::2, ::2])[:, :, ::2, ::2]
    np.testing.assert_allclose(pyr[-1].numpy(), expected, atol=1e-9)


def test_pyramid_rejects_indivisible_sizes():
    with pytest.raises(ValueError):
        laplacian_pyramid(torch.zeros(1, 3, 30, 30), 3)


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((64, 64), [64, 32, 16]),
        ((256, 256), [256, 128, 64, 32, 16]),
        ((48, 40), [40, 20]),
        ((50, 50), [50, 25]),
        ((8, 8), []),
    ],
)
def test_pyramid_resolutions(hw, expected):
    assert pyramid_resolutions(*hw) == expected


def test_descriptors_are_the_image_neighborhoods():
    b, c, h, w = 2, 3, 20, 17
    level = torch.arange(b * c * h * w, dtype=torch.float64).reshape(b, c, h, w)
    desc = sample_descriptors(level, 7, 5, torch.Generator().manual_seed(0))
    assert desc.shape == (10, 3, 7, 7)
    arr = level.numpy()
    for i, d in enumerate(desc.numpy()):
        img, _, y, x = np.unravel_index(
            int(d[0, 3, 3]), (b, c, h, w)
        )  # unique values: locate center
        assert img == i // 5 and 3 <= y < h - 3 and 3 <= x < w - 3
        np.testing.assert_array_equal(d, arr[img, :, y - 3 : y + 4, x - 3 : x + 4])


def test_normalization_is_per_channel_over_all_neighborhoods():
    d = torch.from_numpy(np.random.default_rng(0).normal(5, 3, (100, 3, 7, 7)))
    out = normalize_descriptors(d).reshape(100, 3, 7, 7).double().numpy()
    raw = d.numpy()
    for c in range(3):
        expected = (raw[:, c] - raw[:, c].mean()) / raw[:, c].std()
        np.testing.assert_allclose(out[:, c], expected, rtol=1e-5, atol=1e-5)


def test_one_dimensional_swd_is_the_mean_sorted_difference():
    # in 1-D every unit direction is +-1, so SWD = W1 = mean |a_(i) - b_(i)| exactly
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 500), rng.normal(0.3, 2, 500)
    expected = np.abs(np.sort(a) - np.sort(b)).mean()
    got = sliced_wasserstein(
        torch.from_numpy(a[:, None]),
        torch.from_numpy(b[:, None]),
        dirs_per_repeat=8,
        dir_repeats=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert got == pytest.approx(expected, rel=1e-9)
    shifted = sliced_wasserstein(
        torch.from_numpy(a[:, None]),
        torch.from_numpy(a[:, None] + 0.7),
        dirs_per_repeat=4,
        dir_repeats=1,
        generator=torch.Generator().manual_seed(1),
    )
    assert shifted == pytest.approx(0.7, rel=1e-9)


def test_identical_sets_give_exactly_zero():
    # same seed -> same neighborhood positions -> identical descriptor sets -> every sorted
    # projection matches: exactly 0, with no projection noise at all
    a = _smooth_images(16, seed=1)
    res = _swd(a, a.clone())
    assert list(res.levels) == ["64px", "32px", "16px"]
    assert all(v == 0.0 for v in res.levels.values()) and res.avg == 0.0


def test_blurred_copy_scores_worse_at_fine_levels_than_coarse():
    a = _smooth_images(32, seed=2)
    blurred = _swd(a, _blur3(a)).levels
    # the floor: the same images with other neighborhood positions (patch-sampling noise only)
    floor = _swd(a, a, seed_b=7).levels
    assert blurred["64px"] > 2 * blurred["16px"]
    assert blurred["64px"] > 2 * floor["64px"]
    assert blurred["16px"] < 2 * floor["16px"] + 1.0  # a 3x3 blur barely changes the 16px level


def test_unequal_set_sizes_are_subsampled():
    a, b = _smooth_images(10, seed=3), _smooth_images(6, seed=4)
    res = _swd(a, b)
    assert res.n_descriptors == 6 * SMALL.nhoods_per_image
    assert all(np.isfinite(v) and v > 0 for v in res.levels.values())
