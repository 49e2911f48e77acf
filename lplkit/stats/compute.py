"""Streaming latent and decoder-feature statistics of a latent store (`lplkit stats`).

What is measured, over N items drawn from the store:

* **Items.** The population is every `ok` position, plus its horizontally flipped copy when the
  store has `moments_flip` (an item is a `(position, flip)` pair: the flipped copy is a distinct
  image the trainer also sees). `samples=None` (or >= population) takes all items; otherwise N items
  are drawn without replacement by `numpy.random.default_rng(seed)` (`select_items`).
* **Latents.** Each item's latent is a draw from its stored posterior, ``z = mu + sigma * eps``, with
  ``eps = numpy.random.default_rng([seed, position, flip]).standard_normal((C, h, w), float32)``:
  the draw depends only on the item, never on batch size, rank count or order.
* **Latent statistics.** Per-channel mean ``m_c`` and population std ``s_c`` of z over items and
  pixels, and the suggested normalization ``z_n = (z - shift) * scale`` with per-channel
  ``shift = m_c``, ``scale = 1 / s_c``, and its SD-style global scalar variant
  ``shift_factor = mean(z)``, ``scaling_factor = 1 / std(z)`` over all channels pooled:
  ``var = mean_c(s_c^2) + mean_c((m_c - mean(m))^2)`` (equal counts per channel).
* **Decoder features.** For each layer tapped by `DecoderTaps(vae, depth)`: per-channel mean and
  population std (float64 Chan/Welford merge, exact up to float64 rounding) and the 2% / 98%
  quantiles of the pooled values (fixed-bin histograms on a range from a pilot pass over the first
  `pilot` items; see `lplkit.stats.accumulators`), plus the share of values outside the LPL's dataset
  outlier mask ``q_low - 2 s < f < q_high + 2 s`` (read off the same histograms).

Under torchrun (an initialized default process group) rank r processes items ``r::world`` and the
accumulators are all-gathered and merged (`lplkit.stats.accumulators.gather_merge`); every rank runs the
same pilot so the histogram edges agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lplkit.distributed import group_rank_world
from lplkit.errors import StoreError
from lplkit.lpl.decoder_taps import FeatureStats
from lplkit.preemption import StopRequest
from lplkit.stats.accumulators import ChannelHistogram, ChannelMoments, gather_merge

if TYPE_CHECKING:
    from lplkit.lpl.decoder_taps import DecoderTaps

__all__ = [
    "Q_HIGH",
    "Q_LOW",
    "LayerStats",
    "StoreStats",
    "compute_stats",
    "item_latents",
    "select_items",
]

Q_LOW, Q_HIGH = 0.02, 0.98  # the quantiles of the LPL outlier mask
MASK_STDS = 2.0  # inliers: q_low - 2 std < f < q_high + 2 std
DEFAULT_BINS = 2048
DEFAULT_PILOT = 16


@dataclass
class LayerStats:
    """Per-channel statistics of one decoder layer (tensors `(C,)` float64 on CPU).

    `q_error_bound` is the histogram bin width: the in-range bound on |q_low/q_high - exact|.
    `hist` is the full accumulator (kept so other quantiles can be read later; may be None).
    """

    name: str
    channels: int
    height: int
    width: int
    upsample_factor: int
    count: int
    mean: Tensor
    std: Tensor
    q_low: Tensor
    q_high: Tensor
    q_error_bound: Tensor
    outlier_share: float
    hist: ChannelHistogram | None = None

    def scalars(self) -> dict[str, Any]:
        """The layer's scalar fields (its stored attributes, and the head of its summary)."""
        return {
            "name": self.name,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "upsample_factor": self.upsample_factor,
            "count": self.count,
            "outlier_share": self.outlier_share,
        }


@dataclass
class StoreStats:
    """Latent and decoder-feature statistics of a store, as written by `lplkit stats`.

    Attributes:
        latent_mean, latent_std: `(C,)` float64 per-channel statistics of sampled raw latents.
        latent_count: values per channel the latent statistics reduce (items x h x w).
        layers: decoder-feature statistics, in `DecoderTaps` order (empty when no decoder ran).
        meta: provenance (samples, seed, autoencoder, depth, store hash, version, created time).
        items: `(n, 2)` int64 `(position, flip)` of the items used (None when not loaded).
    """

    latent_mean: Tensor
    latent_std: Tensor
    latent_count: int
    layers: list[LayerStats]
    meta: dict[str, Any] = field(default_factory=dict)
    items: np.ndarray | None = None

    @property
    def latent_shift(self) -> Tensor:
        """Per-channel shift of ``z_n = (z - shift) * scale``."""
        return self.latent_mean

    @property
    def latent_scale(self) -> Tensor:
        """Per-channel scale ``1 / std`` of ``z_n = (z - shift) * scale``."""
        return 1.0 / self.latent_std

    @property
    def shift_factor(self) -> float:
        """Global scalar shift: the mean of z over all channels (equal counts per channel)."""
        return float(self.latent_mean.mean())

    @property
    def scaling_factor(self) -> float:
        """SD-style global scale ``1 / std(z)`` with channels pooled:
        ``var = mean_c(s_c^2) + mean_c((m_c - mean(m))^2)``."""
        m = self.latent_mean
        var = self.latent_std.square().mean() + (m - m.mean()).square().mean()
        return float(1.0 / var.sqrt())

    @property
    def feature_stats(self) -> dict[str, Any]:
        """`{layer name: FeatureStats}` (float32), what `LatentPerceptualLoss(feature_stats=...)` takes."""

        return {
            layer.name: FeatureStats(
                mean=layer.mean.float(),
                std=layer.std.float(),
                q_low=layer.q_low.float(),
                q_high=layer.q_high.float(),
            )
            for layer in self.layers
        }


def select_items(
    ok_positions: Sequence[int] | np.ndarray, *, flips: bool, samples: int | None, seed: int
) -> np.ndarray:
    """`(n, 2)` int64 `(position, flip)` items, sorted (sequential reads), see module docstring."""
    pos = np.asarray(ok_positions, dtype=np.int64)
    population = [np.stack([pos, np.zeros_like(pos)], axis=1)]
    if flips:
        population.append(np.stack([pos, np.ones_like(pos)], axis=1))
    items = np.concatenate(population, axis=0)
    if samples is not None and samples < len(items):
        pick = np.random.default_rng(seed).choice(len(items), size=samples, replace=False)
        items = items[pick]
    order = np.lexsort((items[:, 1], items[:, 0]))
    return items[order]


def item_latents(
    store: Any, items: np.ndarray, *, seed: int, positions: np.ndarray | None = None
) -> Tensor:
    """Sampled raw latents ``mu + sigma * eps`` `(n, C, h, w)` float32 for `(position, flip)` items.

    eps is drawn from `default_rng([seed, position, flip])`; `positions` (the global positions of
    items read from a bucket's store) replaces the position in that seed."""
    seeds = items[:, 0] if positions is None else np.asarray(positions, dtype=np.int64)
    out: list[np.ndarray | None] = [None] * len(items)
    for flip in (0, 1):
        rows = np.flatnonzero(items[:, 1] == flip)
        if len(rows) == 0:
            continue
        mean, std = store.read(items[rows, 0].tolist(), flip=bool(flip))
        for k, row in enumerate(rows):
            rng = np.random.default_rng([seed, int(seeds[row]), flip])
            eps = rng.standard_normal(mean.shape[1:], dtype=np.float32)
            out[row] = np.asarray(mean[k], np.float32) + np.asarray(std[k], np.float32) * eps
    return torch.from_numpy(np.stack(out))  # type: ignore[arg-type]


def latent_groups(store: Any, items: np.ndarray, *, seed: int) -> list[Tensor]:
    """`item_latents` of `items` (global positions), one tensor per bucket they fall in, in item
    order (a square store: one tensor). Statistics are per channel, so buckets of different
    latent shapes add up (`ChannelMoments` / `ChannelHistogram` reduce every other dim)."""
    if not getattr(store, "bucketed", False):
        return [item_latents(store, items, seed=seed)]
    which = store.bucket_of(items[:, 0])
    out = []
    for b in np.unique(which):
        sel = items[which == b]
        local = sel.copy()
        local[:, 0] -= store.buckets[int(b)].start
        out.append(item_latents(store.bucket_view(int(b)), local, seed=seed, positions=sel[:, 0]))
    return out


def _layer_stats(
    info: Any, shape: tuple[int, ...], moments: ChannelMoments, hist: ChannelHistogram
) -> LayerStats:
    """Finalize one layer: quantiles and outlier share from the histogram, moments to CPU."""
    mean, std = moments.mean.cpu(), moments.std.cpu()
    hist = ChannelHistogram(
        *(t.cpu() for t in (hist.lo, hist.hi, hist.counts, hist.vmin, hist.vmax))
    )
    q_low, q_high = hist.quantile(Q_LOW), hist.quantile(Q_HIGH)
    outside = hist.cdf(q_low - MASK_STDS * std) + (1.0 - hist.cdf(q_high + MASK_STDS * std))
    return LayerStats(
        name=info.name,
        channels=int(shape[1]),
        height=int(shape[2]),
        width=int(shape[3]),
        upsample_factor=int(info.upsample_factor),
        count=moments.count,
        mean=mean,
        std=std,
        q_low=q_low,
        q_high=q_high,
        q_error_bound=hist.bin_width,
        outlier_share=float(outside.mean()),
        hist=hist,
    )


@torch.no_grad()
def compute_stats(
    store: Any,
    taps: DecoderTaps | None,
    *,
    samples: int | None = None,
    seed: int = 0,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    bins: int = DEFAULT_BINS,
    pilot: int = DEFAULT_PILOT,
    on_progress: Callable[[int, int], None] | None = None,
    stop: StopRequest | None = None,
) -> StoreStats:
    """Statistics of `store` (a `LatentStore`) and of `taps` (a `DecoderTaps`, or None: latents only).

    Args:
        samples: number of items (None = all); see `select_items`.
        seed: item selection and latent noise seed.
        batch_size: items per decoder call.
        device: where the decoder runs and the accumulators live (the taps must already be there).
        bins: regular histogram bins per channel (quantile error <= range / bins).
        pilot: items of the pilot pass that fixes the histogram ranges (the same on every rank;
            at most a quarter of the items).
        on_progress: called with (items done on this rank, items for this rank) after each batch.
        stop: when it is requested this rank stops after the batch in flight; the merge still
            runs (every rank must reach it), so the result covers fewer items: the caller
            (`run_stats`) discards it and writes nothing.

    Returns:
        `StoreStats` with `meta` holding only the sampling record (`compute` adds provenance).
    """

    manifest = store.manifest
    items = select_items(
        store.ok_positions, flips=bool(manifest.get("flips")), samples=samples, seed=seed
    )
    if len(items) == 0:
        raise StoreError("the store has no `ok` samples: nothing to compute statistics from")
    rank, world = group_rank_world()
    mine = items[rank::world]
    channels = int(manifest["latent_shape"][0])
    latent = ChannelMoments.empty(channels, device)
    feats: list[tuple[ChannelMoments, ChannelHistogram]] = []
    shapes: list[tuple[int, ...]] = []
    if taps is not None:
        # Evenly spaced pilot items (not the first ones: stores are often sorted by class).
        # At most a quarter of the items: the pilot is extra decoder work for small runs.
        n_pilot = max(1, min(pilot, len(items) // 4))
        idx = np.unique(np.linspace(0, len(items) - 1, n_pilot).round().astype(np.int64))
        pieces = [taps(z.to(device)) for z in latent_groups(store, items[idx], seed=seed)]
        for k in range(len(pieces[0])):
            # a bucketed store's pieces differ in h, w: the pilot range is over all their values
            f = torch.cat([p[k].transpose(0, 1).reshape(p[k].shape[1], -1) for p in pieces], 1)
            feats.append(
                (
                    ChannelMoments.empty(f.shape[0], device),
                    ChannelHistogram.from_pilot(f[None], bins=bins),
                )
            )
            shapes.append(tuple(pieces[0][k].shape))
    for start in range(0, len(mine), batch_size):
        for z in latent_groups(store, mine[start : start + batch_size], seed=seed):
            z = z.to(device)
            latent.update(z)
            if taps is not None:
                for (moments, hist), f in zip(feats, taps(z), strict=True):
                    moments.update(f)
                    hist.update(f)
        if on_progress is not None:
            on_progress(min(start + batch_size, len(mine)), len(mine))
        if stop is not None and stop.requested:
            break
    latent = gather_merge(latent)
    layers = []
    if taps is not None:
        for info, shape, (moments, hist) in zip(taps.layers, shapes, feats, strict=True):
            layers.append(_layer_stats(info, shape, gather_merge(moments), gather_merge(hist)))
    meta = {"samples": len(items), "seed": seed, "flips": bool(manifest.get("flips")), "pilot": 0}
    if taps is not None:
        meta["pilot"] = len(idx)
    return StoreStats(latent.mean.cpu(), latent.std.cpu(), latent.count, layers, meta, items)
