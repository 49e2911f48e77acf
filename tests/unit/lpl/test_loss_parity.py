"""Parity: both presets equal a straightforward implementation written here (value and gradient).

The oracle follows the definitions literally: decoder modules called by hand, numpy sorting for the
quantiles, explicit window loops for the dilation/erosion, python loops over layers, samples and
channels. It shares no code with lplkit. Everything runs in float64 so 1e-5 relative is meaningful.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.models import make_tiny_vae

from lplkit.lpl.loss import LatentPerceptualLoss


def oracle_mask(y: torch.Tensor, dilate: int, erode: int) -> torch.Tensor:
    """2%/98% order statistics +- 2 std (ddof=1) inliers, then window max (dilate), window min."""
    a = y.detach().numpy()
    b_, c_, h, w = a.shape
    n = h * w
    mask = np.zeros_like(a)
    for b in range(b_):
        for c in range(c_):
            s = np.sort(a[b, c].ravel())
            q1, q2 = s[int(n * 0.02) - 1], s[int(n * 0.98) - 1]
            m = 2 * a[b, c].std(ddof=1)
            mask[b, c] = (a[b, c] > q1 - m) & (a[b, c] < q2 + m)
    for k, reduce in ((dilate, np.max), (erode, np.min)):
        r, src = (k - 1) // 2, mask.copy()
        for i in range(h):
            for j in range(w):
                win = src[:, :, max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
                mask[:, :, i, j] = reduce(win, axis=(2, 3))
    return torch.from_numpy(mask)


def oracle_features(vae, z, *, pqc: bool):
    dec = vae.decoder
    h = dec.conv_in(vae.post_quant_conv(z) if pqc else z)
    out = [dec.mid_block(h, None)]
    for block in dec.up_blocks:
        out.append(block(out[-1], None))
    return out


def oracle_lpl(vae, pred_raw, target_raw, *, preset: str) -> tuple[torch.Tensor, float]:
    """Per-sample LPL by the definition; returns (values, share of masked target positions)."""
    reference = preset == "diffusers-reference"
    xs = oracle_features(vae, pred_raw, pqc=not reference)
    with torch.no_grad():
        ys = oracle_features(vae, target_raw, pqc=not reference)
    factors = [1, 2, 4, 4]  # tiny VAE upsample factors, by hand
    per_sample, masked, total = [], 0.0, 0
    for b in range(pred_raw.shape[0]):
        acc = 0.0
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            # reference layers: i == 2 (down_f 2 -> dilate 1, erode 3), i >= 3 (dilate 3, erode 5)
            if i == 2:
                mask = oracle_mask(y[b : b + 1], 1, 3)[0]
            elif i >= 3:
                mask = oracle_mask(y[b : b + 1], 3, 5)[0]
            else:
                mask = torch.ones_like(y[b])
            masked, total = masked + float((mask == 0).sum()), total + mask.numel()
            xb, yb = x[b] * mask, y[b] * mask
            if reference:  # both divided by the target's channel L2 norm (+1e-6), pow2 weights
                norm = torch.sqrt((yb**2).sum(dim=0)) + 1e-6
                xb, yb = xb / norm, yb / norm
                weight = 2.0 ** -min(i, 3)
            else:  # paper: per-channel standardization with the prediction's inlier statistics
                weight = 1.0 / factors[i]
            channel_terms = []
            for c in range(x.shape[1]):
                xc, yc, mc = xb[c], yb[c], mask[c]
                if not reference:
                    mu = (xc * mc).sum() / mc.sum()
                    var = (((xc - mu) ** 2) * mc).sum() / mc.sum()
                    xc, yc = (xc - mu) / torch.sqrt(var + 1e-6), (yc - mu) / torch.sqrt(var + 1e-6)
                channel_terms.append((((xc - yc) ** 2) * mc).sum() / mc.sum())
            acc = acc + weight * sum(channel_terms) / len(channel_terms)
        per_sample.append(acc / len(xs))
    return torch.stack(per_sample), masked / total


@pytest.fixture(scope="module")
def vae64():
    return make_tiny_vae(0).double()


def normalized_latents(scale: float):
    """Model-space latents with a few large spikes so the outlier masks remove something."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 16, 16, generator=g, dtype=torch.float64)
    target[:, :, 2, 5] = 60.0
    target[1, :, 6, 1] = -60.0
    pred = target + 0.3 * torch.randn(2, 4, 16, 16, generator=g, dtype=torch.float64)
    return pred * scale, target * scale


@pytest.mark.parametrize("preset", ["diffusers-reference", "paper"])
def test_preset_value_and_gradient_equal_oracle(vae64, preset):
    scale = vae64.config.scaling_factor
    pred_n, target_n = normalized_latents(scale)

    lpl = LatentPerceptualLoss(vae64, preset)
    p1 = pred_n.clone().requires_grad_()
    got = lpl.from_normalized(p1, target_n, scale, 0.0)
    got.sum().backward()

    p2 = pred_n.clone().requires_grad_()
    want, masked_share = oracle_lpl(vae64, p2 / scale, target_n / scale, preset=preset)
    want.sum().backward()

    assert 0.001 < masked_share < 0.2  # the masks are exercised, not all-ones
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    gmax = float(p2.grad.abs().max())
    assert gmax > 0
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-5, atol=1e-5 * gmax)
