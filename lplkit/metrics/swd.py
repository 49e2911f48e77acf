"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al. 2018, "Progressive Growing
of GANs", section 5 and their `metrics/sliced_wasserstein.py`).

Per pyramid level (full resolution down to `min_resolution`, 16 px in the paper):

1. Descriptors: `nhoods_per_image` (128) random 7x7 neighborhoods of each image's Laplacian level,
   each a vector d in R^(3*7*7) = R^147.
2. Normalization: each descriptor set (samples, references) separately, per color channel c,
   d[c] <- (d[c] - mean_c) / std_c over all its neighborhoods and positions.
3. Distance: for random unit directions w (dirs_per_repeat x dir_repeats, 512 x 4 here; the paper's
   code uses 128 x 4), the 1-D Wasserstein-1 distance between the projected sets
   (equal sizes M, sorted projections a_(i), b_(i)):

       SW_1(A, B) = E_w [ (1/M) sum_i |<a, w>_(i) - <b, w>_(i)| ]

   reported x 1e3 per level, plus the average over levels.

Levels are named by resolution ("64px" = finest, the sharpness level; coarser levels measure
color/layout). Everything is seeded: identical inputs with the same seed give exactly 0, because
neighborhood positions are drawn from the same stream for both sets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from lplkit.metrics.pyramid import laplacian_pyramid


@dataclass(frozen=True)
class SWDConfig:
    """SWD settings; defaults follow Karras et al. (2018) except 512 directions per repeat."""

    nhood_size: int = 7
    nhoods_per_image: int = 128
    dirs_per_repeat: int = 512
    dir_repeats: int = 4
    min_resolution: int = 16
    dirs_chunk: int = 128  # directions projected at once (bounds the sort's memory)


@dataclass
class SWDResult:
    """Per-level SWD x 1e3 (keys like "64px", finest first) and their mean."""

    levels: dict[str, float]
    avg: float
    n_descriptors: int
    config: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "levels": self.levels,
            "avg": self.avg,
            "n_descriptors": self.n_descriptors,
            "config": self.config,
        }


def pyramid_resolutions(height: int, width: int, min_resolution: int = 16) -> list[int]:
    """Shorter-side resolution of each pyramid level, finest first, down to `min_resolution`.

    A level is added only while both sides stay divisible (each level halves H and W exactly).
    """
    out = []
    h, w = height, width
    while min(h, w) >= min_resolution:
        out.append(min(h, w))
        if h % 2 or w % 2:
            break
        h, w = h // 2, w // 2
    return out


def sample_descriptors(
    level_BCHW: torch.Tensor, nhood_size: int, nhoods_per_image: int, generator: torch.Generator
) -> torch.Tensor:
    """`nhoods_per_image` random fully-inside neighborhoods per image -> (B * k, C, s, s)."""
    b, c, h, w = level_BCHW.shape
    half = nhood_size // 2
    n = b * nhoods_per_image
    ys = torch.randint(half, h - half, (n,), generator=generator)
    xs = torch.randint(half, w - half, (n,), generator=generator)
    img = torch.arange(n) // nhoods_per_image
    off = torch.arange(-half, half + 1)
    chan = torch.arange(c)
    # flat index of (image, channel, y + dy, x + dx) for every neighborhood element
    idx = (
        (img[:, None, None, None] * c + chan[None, :, None, None]) * h
        + (ys[:, None, None, None] + off[None, None, :, None])
    ) * w + (xs[:, None, None, None] + off[None, None, None, :])
    flat = level_BCHW.reshape(-1)
    return flat[idx.to(flat.device)]


def normalize_descriptors(desc_NCss: torch.Tensor) -> torch.Tensor:
    """Per-channel standardization over all neighborhoods and positions, flattened to (N, C*s*s)."""
    d = desc_NCss.double()
    d = (d - d.mean(dim=(0, 2, 3), keepdim=True)) / d.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return d.float().reshape(d.shape[0], -1)


def sliced_wasserstein(
    a_ND: torch.Tensor,
    b_ND: torch.Tensor,
    *,
    dirs_per_repeat: int = 512,
    dir_repeats: int = 4,
    generator: torch.Generator,
    dirs_chunk: int = 128,
) -> float:
    """Mean over random unit directions of the 1-D W1 distance between equal-size projected sets."""
    if a_ND.shape != b_ND.shape:
        raise ValueError(
            f"descriptor sets differ in shape: {tuple(a_ND.shape)} vs {tuple(b_ND.shape)}"
        )
    dim = a_ND.shape[1]
    total, count = 0.0, 0
    for _ in range(dir_repeats):
        dirs = torch.randn(dirs_per_repeat, dim, generator=generator)
        dirs = (dirs / dirs.norm(dim=1, keepdim=True)).to(a_ND.device, a_ND.dtype)
        for start in range(0, dirs_per_repeat, dirs_chunk):
            d = dirs[start : start + dirs_chunk]
            # (directions, M) rows: sorting contiguous rows is faster than sorting columns
            pa = torch.sort(d @ a_ND.T, dim=1).values
            pb = torch.sort(d @ b_ND.T, dim=1).values
            total += float((pa - pb).abs().double().sum())
            count += pa.numel()
    return total / count


class SWDDescriptors:
    """Streams image batches into per-level raw descriptors (positions from a seeded generator)."""

    def __init__(self, config: SWDConfig, *, seed: int) -> None:
        self.config = config
        self._generator = torch.Generator().manual_seed(seed)
        self._levels: list[list[torch.Tensor]] = []
        self.resolutions: list[int] = []

    def update(self, images_BCHW: torch.Tensor) -> None:
        """Add a batch of images (uint8 or float in [0, 255], any device)."""
        h, w = images_BCHW.shape[-2:]
        res = pyramid_resolutions(h, w, self.config.min_resolution)
        if not res:
            raise ValueError(f"{h}x{w} images are smaller than min_resolution")
        if not self.resolutions:
            self.resolutions = res
            self._levels = [[] for _ in res]
        elif res != self.resolutions:
            raise ValueError(f"image size {h}x{w} differs from the first batch's")
        cfg = self.config
        for k, level in enumerate(laplacian_pyramid(images_BCHW.float(), len(res))):
            desc = sample_descriptors(level, cfg.nhood_size, cfg.nhoods_per_image, self._generator)
            self._levels[k].append(desc)

    def finalize(self) -> list[torch.Tensor]:
        """Normalized (N, C*s*s) descriptors per level, finest first."""
        return [normalize_descriptors(torch.cat(chunks)) for chunks in self._levels]


def swd_between(
    desc_a: list[torch.Tensor],
    desc_b: list[torch.Tensor],
    resolutions: list[int],
    config: SWDConfig,
    *,
    seed: int,
) -> SWDResult:
    """SWD x 1e3 per level; the larger set is randomly subsampled to the smaller one's size."""
    generator = torch.Generator().manual_seed(seed + 1)
    levels: dict[str, float] = {}
    n_used = 0
    for res, a, b in zip(resolutions, desc_a, desc_b, strict=True):
        n_used = min(len(a), len(b))
        if len(a) > n_used:
            a = a[torch.randperm(len(a), generator=generator)[:n_used].to(a.device)]
        if len(b) > n_used:
            b = b[torch.randperm(len(b), generator=generator)[:n_used].to(b.device)]
        dist = sliced_wasserstein(
            a,
            b,
            dirs_per_repeat=config.dirs_per_repeat,
            dir_repeats=config.dir_repeats,
            generator=generator,
            dirs_chunk=config.dirs_chunk,
        )
        levels[f"{res}px"] = dist * 1e3
    avg = sum(levels.values()) / len(levels)
    return SWDResult(levels=levels, avg=avg, n_descriptors=n_used, config=asdict(config))
