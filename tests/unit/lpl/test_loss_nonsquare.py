"""LPL on non-square latents (aspect-ratio buckets): the value equals the loss of the same decoder
features computed directly, and crops stay inside the latent on both axes."""

from __future__ import annotations

import pytest
import torch
from helpers.models import make_tiny_vae

from lplkit.lpl.crops import crop_offsets
from lplkit.lpl.loss import LatentPerceptualLoss


@pytest.fixture(scope="module")
def vae():
    return make_tiny_vae(0)


def _feats(vae, z):
    """The decoder's tapped features, from the diffusers modules themselves."""
    dec = vae.decoder
    h = dec.conv_in(vae.post_quant_conv(z))
    out = [dec.mid_block(h, None)]
    for blk in dec.up_blocks:
        out.append(blk(out[-1], None))
    return out


@pytest.mark.parametrize("hw", [(8, 16), (16, 6)])
def test_value_equals_direct_decoder_features(vae, hw):
    """norm=none, no outliers: sum_l w_l mean_(c,h,w)(dphi_l^2) / L by hand, w_l = 1 / upsampling."""
    g = torch.Generator().manual_seed(1)
    target = torch.randn(3, 4, *hw, generator=g)
    pred = target + 0.3 * torch.randn(target.shape, generator=g)
    lpl = LatentPerceptualLoss(vae, norm="none", outliers=False)
    with torch.no_grad():
        fp, ft = _feats(vae, pred), _feats(vae, target)
        assert fp[-1].shape[-2:] == (hw[0] * 4, hw[1] * 4)  # the tiny VAE upsamples 4x
        weights = [1.0, 1 / 2, 1 / 4, 1 / 4]
        terms = [(a - b).square().mean(dim=(1, 2, 3)) for a, b in zip(fp, ft, strict=True)]
        want = sum(w * t for w, t in zip(weights, terms, strict=True)) / 4
        torch.testing.assert_close(lpl(pred, target), want, rtol=1e-5, atol=0)


def test_paper_preset_runs_and_is_zero_on_equal_latents(vae):
    z = torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(2))
    lpl = LatentPerceptualLoss(vae)  # the paper preset: standardized features, outlier masks
    torch.testing.assert_close(lpl(z, z.clone()), torch.zeros(2), rtol=0, atol=1e-10)
    assert (lpl(z + 0.2, z) > 0).all()


@pytest.mark.parametrize("mode", ["random", "grid"])
def test_crops_stay_inside_a_non_square_latent(mode):
    u = torch.rand(4000, 2, generator=torch.Generator().manual_seed(0))
    off = crop_offsets(u, (6, 20), 4, mode)
    assert (off >= 0).all() and (off[:, 0] + 4 <= 6).all() and (off[:, 1] + 4 <= 20).all()
    # every legal window of the long axis is reached (random: 17 columns; grid: 5 tiles)
    cols = set(off[:, 1].tolist())
    assert cols == (set(range(17)) if mode == "random" else {0, 4, 8, 12, 16})
