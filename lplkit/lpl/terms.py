"""The per-layer math of the Latent Perceptual Loss: outlier mask, normalization, distance, weights.

Notation for one tapped layer l: prediction features x, target features y, both `(B, C, H, W)`;
m in {0, 1} the inlier mask (all ones when the layer has no outlier mask). All functions here are
pure tensor math and are called in fp32 (or fp64) with autocast disabled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lplkit.lpl.decoder_taps import FeatureStats, LayerInfo

__all__ = [
    "inlier_mask",
    "layer_distance",
    "layer_weights",
    "morphology_sizes",
    "normalize_pair",
]


def morphology_sizes(down_f: int) -> tuple[int, int]:
    """(dilation size, erosion size) of the outlier mask for a layer `down_f` x below full size.

    As in the reference code: dilation ``ceil(3 / down_f)`` (2 -> 1) and erosion
    ``ceil(5 / down_f)`` (2 -> 3), so full-resolution layers get (3, 5) and half-resolution (1, 3).
    """
    dilate = math.ceil(3 / down_f)
    erode = math.ceil(5 / down_f)
    return (1 if dilate == 2 else dilate), (3 if erode == 2 else erode)


def _dilate(m: Tensor, k: int) -> Tensor:
    """Binary dilation with a k x k square (pixels outside the image are ignored)."""
    return m if k <= 1 else F.max_pool2d(m, k, stride=1, padding=(k - 1) // 2)


def _erode(m: Tensor, k: int) -> Tensor:
    """Binary erosion with a k x k square (pixels outside the image are ignored)."""
    return m if k <= 1 else -F.max_pool2d(-m, k, stride=1, padding=(k - 1) // 2)


def inlier_mask(
    y: Tensor,
    *,
    quantile: float = 0.02,
    std_mult: float = 2.0,
    dilate: int = 1,
    erode: int = 1,
    stats: FeatureStats | None = None,
) -> Tensor:
    """Float {0, 1} mask of the inliers of target features `y` (B, C, H, W), computed without grad.

    Per (sample, channel), over the N = H*W positions, with q1, q2 the `quantile` and
    `1 - quantile` order statistics (the k-th smallest values, k1 = max(1, floor(N q)),
    k2 = floor(N (1 - q)), as the reference code's `kthvalue`) and s the unbiased std:

        m = std_mult * s,   inlier  <=>  q1 - m < y < q2 + m

    then a dilation (size `dilate`) followed by an erosion (size `erode`) of the inlier mask.
    With `stats` (dataset variant), q1, q2 and s are the cached per-channel values instead.
    """
    with torch.no_grad():
        _, c, h, w = y.shape
        if stats is not None:
            view = (1, c, 1, 1)
            q1, q2 = stats.q_low.view(view), stats.q_high.view(view)
            m = std_mult * stats.std.view(view)
        elif h * w < 2:  # one value per channel: nothing can be an outlier
            return torch.ones_like(y)
        else:
            flat = y.flatten(2)
            n = flat.shape[-1]
            k1, k2 = max(1, int(n * quantile)), max(1, int(n * (1 - quantile)))
            q1 = flat.kthvalue(k1, dim=-1).values[..., None, None]
            q2 = flat.kthvalue(k2, dim=-1).values[..., None, None]
            m = std_mult * flat.std(dim=-1)[..., None, None]
        mask = ((q1 - m < y) & (y < q2 + m)).to(y.dtype)
        return _erode(_dilate(mask, dilate), erode)


def _channel_l2(f: Tensor, eps: float) -> Tensor:
    """||f||_2 over channels at every pixel, plus eps: shape (B, 1, H, W)."""
    return f.square().sum(dim=1, keepdim=True).sqrt() + eps


def normalize_pair(
    x: Tensor,
    y: Tensor,
    mask: Tensor | None,
    norm: str,
    *,
    eps: float = 1e-6,
    standardize_stats: str = "pred",
    stats: FeatureStats | None = None,
) -> tuple[Tensor, Tensor]:
    """Normalize prediction/target features of one layer; both are first multiplied by the mask.

    - ``l2``:   x / (||x||_c + eps), y / (||y||_c + eps)   (norm over channels at each pixel)
    - ``l2-shared``: both divided by the target's (||y||_c + eps)  (reference "shared")
    - ``standardize-shared``: (f - mu) / sqrt(var + eps) for both, with the per-sample per-channel
      mean/variance over the inlier positions of `standardize_stats` ("pred" -> x, "target" -> y):
      mu = sum(m s) / sum(m), var = sum(m (s - mu)^2) / sum(m)
    - ``dataset``: (f - mean_c) / sqrt(std_c^2 + eps) with the cached per-channel `stats`
    - ``none``: unchanged
    """
    if mask is not None:
        x, y = x * mask, y * mask
    if norm == "none":
        return x, y
    if norm == "l2":
        return x / _channel_l2(x, eps), y / _channel_l2(y, eps)
    if norm == "l2-shared":
        n = _channel_l2(y, eps)
        return x / n, y / n
    if norm == "standardize-shared":
        s = x if standardize_stats == "pred" else y
        w = torch.ones_like(s) if mask is None else mask
        count = w.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        mu = (w * s).sum(dim=(2, 3), keepdim=True) / count
        var = (w * (s - mu).square()).sum(dim=(2, 3), keepdim=True) / count
        inv = (var + eps).rsqrt()
        return (x - mu) * inv, (y - mu) * inv
    if norm == "dataset":
        if stats is None:
            raise ValueError("the `dataset` norm needs FeatureStats for every tapped layer")
        view = (1, x.shape[1], 1, 1)
        mu = stats.mean.view(view)
        inv = (stats.std.view(view).square() + eps).rsqrt()
        return (x - mu) * inv, (y - mu) * inv
    raise ValueError(f"unknown norm {norm!r}")


def layer_distance(xn: Tensor, yn: Tensor, mask: Tensor | None, distance: str) -> Tensor:
    """Per-sample distance of one layer, shape (B,).

        d_l = 1/C sum_c [ sum_hw m * D(xn, yn) / sum_hw m ],   D = (xn - yn)^2 (mse) or |xn - yn| (l1)

    A fully masked channel contributes 0 (its denominator is clamped to 1).
    """
    diff = xn - yn
    d = diff.square() if distance == "mse" else diff.abs()
    if mask is None:
        per_channel = d.mean(dim=(2, 3))
    else:
        per_channel = (d * mask).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).clamp_min(1.0)
    return per_channel.mean(dim=1)


def layer_weights(kind: str, layers: Sequence[LayerInfo]) -> list[float]:
    """Weight w_i of each tapped layer i (0 = first stage).

    - ``uniform``: 1
    - ``pow2``: 2^-min(i, 3)  (reference code; on SD-family VAEs equal to ``upsampling``)
    - ``upsampling``: 1 / (layer's upsample factor vs the latent), i.e. inversely proportional to
      the layer's resolution
    """
    if kind == "uniform":
        return [1.0] * len(layers)
    if kind == "pow2":
        return [2.0 ** -min(i, 3) for i in range(len(layers))]
    if kind == "upsampling":
        return [1.0 / info.upsample_factor for info in layers]
    raise ValueError(f"unknown layer weighting {kind!r}")
