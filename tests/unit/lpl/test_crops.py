"""LPL on latent crops: window placement, the window's content, and the loss of a crop equals the
loss of the hand-sliced window (value and gradient)."""

from __future__ import annotations

import pytest
import torch
from helpers.models import make_tiny_vae

from lplkit.errors import ConfigError
from lplkit.lpl.config import resolve_lpl_config
from lplkit.lpl.crops import crop_offsets, crop_windows
from lplkit.lpl.loss import LatentPerceptualLoss


@pytest.fixture(scope="module")
def vae():
    return make_tiny_vae(0)


def latents(b=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(b, 4, size, size, generator=g)
    return target + 0.3 * torch.randn(target.shape, generator=g), target


def test_offsets_random_and_grid_by_hand():
    u = torch.tensor([[0.0, 0.999999], [0.5, 0.26], [0.74, 0.76]])
    # random on 32 with crop 16: 17 positions, floor(u * 17)
    assert crop_offsets(u, (32, 32), 16, "random").tolist() == [[0, 16], [8, 4], [12, 12]]
    # grid on 32 with crop 8: 4 tiles per axis at 0, 8, 16, 24
    assert crop_offsets(u, (32, 32), 8, "grid").tolist() == [[0, 24], [16, 8], [16, 24]]
    # non-square latent, crop = one side: only offset 0 on that axis
    assert crop_offsets(u, (16, 24), 16, "random")[:, 0].tolist() == [0, 0, 0]
    with pytest.raises(ConfigError, match="larger than"):
        crop_offsets(u, (8, 8), 16, "random")


def test_windows_equal_slices():
    z = torch.randn(3, 4, 12, 10)
    offsets = torch.tensor([[0, 0], [3, 5], [7, 5]])
    got = crop_windows(z, offsets, 5)
    want = torch.stack([z[i, :, r : r + 5, c : c + 5] for i, (r, c) in enumerate(offsets.tolist())])
    assert torch.equal(got, want)


def test_crop_loss_equals_loss_of_sliced_windows(vae):
    pred, target = latents()
    u = torch.tensor([[0.1, 0.9], [0.5, 0.5], [0.99, 0.0]])
    offsets = crop_offsets(u, (16, 16), 8, "random").tolist()
    full = LatentPerceptualLoss(vae)
    cropped = LatentPerceptualLoss(vae, crop=8)
    p1 = pred.clone().requires_grad_()
    got = cropped(p1, target, crop_u=u)
    got.sum().backward()
    p2 = pred.clone().requires_grad_()
    want = torch.cat(
        [
            full(p2[i : i + 1, :, r : r + 8, c : c + 8], target[i : i + 1, :, r : r + 8, c : c + 8])
            for i, (r, c) in enumerate(offsets)
        ]
    )
    want.sum().backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(p1.grad, p2.grad)
    outside = torch.ones_like(pred, dtype=torch.bool)
    for i, (r, c) in enumerate(offsets):
        outside[i, :, r : r + 8, c : c + 8] = False
    assert p1.grad[outside].abs().sum() == 0 and p1.grad[~outside].abs().sum() > 0


def test_crop_draws_follow_selection_and_generator(vae):
    pred, target = latents(b=4)
    lpl = LatentPerceptualLoss(vae, crop=8, crop_mode="grid")
    u = torch.rand(4, 2, generator=torch.Generator().manual_seed(3))
    idx = torch.tensor([1, 3])
    with torch.no_grad():
        sel = lpl(pred, target, select=idx, crop_u=u)
        gathered = lpl.forward_gathered(pred[idx], target[idx], crop_u=u[idx])
        torch.testing.assert_close(sel[idx], gathered, rtol=0, atol=0)
        assert sel[0] == 0 and sel[2] == 0
        # no crop_u: drawn from the generator, so the same seed gives the same windows
        a = lpl(pred, target, generator=torch.Generator().manual_seed(7))
        b = lpl(pred, target, generator=torch.Generator().manual_seed(7))
        want = lpl(
            pred, target, crop_u=torch.rand(4, 2, generator=torch.Generator().manual_seed(7))
        )
        assert torch.equal(a, b) and torch.equal(a, want)
        # crop = the whole latent is the uncropped loss
        torch.testing.assert_close(
            LatentPerceptualLoss(vae, crop=16)(pred, target),
            LatentPerceptualLoss(vae)(pred, target),
        )
    with pytest.raises(ValueError, match="crop_u"):
        lpl.forward_gathered(pred, target, crop_u=u[:2])


@pytest.mark.parametrize(
    ("bad", "msg"),
    [
        ({"crop": 0}, r"lpl.loss.crop must be an integer in \[1, 65536\], got 0"),
        ({"crop": True}, "must be None or an int >= 1"),
        ({"crop": 2.5}, "must be None or an int >= 1"),
        ({"crop_mode": "center"}, "crop_mode='center' is not one of random, grid"),
    ],
)
def test_crop_options_are_validated(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_lpl_config("paper", **bad)
