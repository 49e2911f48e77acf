"""Mergeable streaming accumulators for per-channel statistics (float64).

Two accumulators, both reducing every dimension except the channel axis (dim 1 of a `(B, C, ...)`
tensor), both *mergeable*: `a.merge(b)` equals the accumulator fed with the union of their inputs,
so torchrun ranks can each process a slice and combine (`gather_merge`).

`ChannelMoments` (Welford / Chan et al. parallel update). For two partitions with counts n_a, n_b,
means mu_a, mu_b and sums of squared deviations M2_a, M2_b::

    n     = n_a + n_b
    delta = mu_b - mu_a
    mu    = mu_a + delta * n_b / n
    M2    = M2_a + M2_b + delta^2 * n_a * n_b / n

A batch enters as its own partition (`torch.var_mean` of its float64 copy), so no running sum of squares
ever cancels catastrophically. `var = M2 / n` (population variance, ddof=0).

`ChannelHistogram` (fixed-bin quantiles). Bin edges per channel are fixed up front (from a small
pilot pass, `ChannelHistogram.from_pilot`), so counts from any partition simply add. Values below
or above the range go to an underflow / overflow bin whose extent is the exact running min / max.
A quantile q is read off the cumulative counts by linear interpolation inside the bin where the
cumulative mass crosses q * n, i.e. assuming values are uniform inside a bin. The error is at most
one bin width `(hi - lo) / bins` (plus the gap between adjacent order statistics) when the quantile
falls inside the range, and at most the tail's extent when it falls in an under/overflow bin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["ChannelHistogram", "ChannelMoments", "gather_merge"]


def _reduce_dims(x: Tensor) -> list[int]:
    """Every dim of a `(B, C, *rest)` tensor except the channel dim 1."""
    if x.dim() < 2:
        raise ValueError(f"expected a (B, C, ...) tensor, got shape {tuple(x.shape)}")
    return [0, *range(2, x.dim())]


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """`(C,)` -> shape broadcasting against `(B, C, *rest)` `x`."""
    return t.view(1, -1, *([1] * (x.dim() - 2)))


@dataclass
class ChannelMoments:
    """Per-channel count, mean and M2 (sum of squared deviations), float64.

    Attributes:
        count: number of values reduced per channel (the same for every channel).
        mean: `(C,)` float64 running mean.
        m2: `(C,)` float64 running sum of squared deviations from the mean.
    """

    count: int
    mean: Tensor
    m2: Tensor

    @classmethod
    def empty(cls, channels: int, device: torch.device | str = "cpu") -> ChannelMoments:
        """An accumulator that has seen nothing (the identity of `merge`)."""
        zeros = torch.zeros(channels, dtype=torch.float64, device=device)
        return cls(0, zeros, zeros.clone())

    @classmethod
    def of(cls, x: Tensor) -> ChannelMoments:
        """Moments of one `(B, C, ...)` tensor, computed in float64 (torch.var_mean)."""
        dims = _reduce_dims(x)
        var, mean = torch.var_mean(x.detach().to(torch.float64), dim=dims, correction=0)
        count = x.numel() // x.shape[1] if x.shape[1] else 0
        return cls(count, mean, var * count)

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def merge(self, other: ChannelMoments) -> ChannelMoments:
        """Chan et al. parallel combination (see module docstring); returns a new accumulator."""
        if other.channels != self.channels:
            raise ValueError(f"cannot merge {self.channels} with {other.channels} channels")
        if other.count == 0:
            return ChannelMoments(self.count, self.mean.clone(), self.m2.clone())
        if self.count == 0:
            return ChannelMoments(other.count, other.mean.clone(), other.m2.clone())
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        delta = other.mean.to(self.mean.device) - self.mean
        mean = self.mean + delta * (n_b / n)
        m2 = self.m2 + other.m2.to(self.m2.device) + delta.square() * (n_a * n_b / n)
        return ChannelMoments(n, mean, m2)

    def update(self, x: Tensor) -> ChannelMoments:
        """Merge the moments of a `(B, C, ...)` batch into this accumulator (in place); returns self."""
        merged = self.merge(ChannelMoments.of(x.to(self.mean.device)))
        self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2
        return self

    @property
    def var(self) -> Tensor:
        """Population variance `M2 / n` (ddof=0), `(C,)` float64."""
        return self.m2 / max(self.count, 1)

    @property
    def std(self) -> Tensor:
        """Population standard deviation, `(C,)` float64."""
        return self.var.sqrt()

    def to_flat(self) -> Tensor:
        """`[count, mean..., m2...]` float64, the wire format of `gather_merge`."""
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.mean.device)
        return torch.cat([count, self.mean, self.m2])

    def from_flat(self, flat: Tensor) -> ChannelMoments:
        """Inverse of `to_flat` for an accumulator shaped like this one."""
        c = self.channels
        flat = flat.to(self.mean.device)
        return ChannelMoments(int(flat[0].item()), flat[1 : 1 + c].clone(), flat[1 + c :].clone())


@dataclass
class ChannelHistogram:
    """Per-channel fixed-bin histogram with exact min/max tails, for approximate quantiles.

    Attributes:
        lo, hi: `(C,)` float64 range of the regular bins (`hi > lo`).
        counts: `(C, bins + 2)` int64; column 0 = values `< lo`, column -1 = values `>= hi`.
        vmin, vmax: `(C,)` float64 exact running min / max (`+inf` / `-inf` when empty).
    """

    lo: Tensor
    hi: Tensor
    counts: Tensor
    vmin: Tensor
    vmax: Tensor

    @classmethod
    def from_pilot(cls, x: Tensor, *, bins: int = 2048, margin: float = 0.25) -> ChannelHistogram:
        """Empty histogram whose range is the pilot batch's per-channel [min, max], widened by
        `margin * span` on each side (values outside still count, in the tail bins)."""
        dims = _reduce_dims(x)
        vmin = x.detach().amin(dim=dims).to(torch.float64)
        vmax = x.detach().amax(dim=dims).to(torch.float64)
        span = (vmax - vmin).clamp_min(1e-6 * vmax.abs().clamp_min(1.0))
        return cls.empty(vmin - margin * span, vmax + margin * span, bins=bins)

    @classmethod
    def empty(cls, lo: Tensor, hi: Tensor, *, bins: int = 2048) -> ChannelHistogram:
        """An empty histogram with `bins` regular bins on `[lo, hi)` per channel."""
        lo, hi = lo.to(torch.float64), hi.to(torch.float64)
        if bool((hi <= lo).any()):
            raise ValueError("histogram range needs hi > lo for every channel")
        c = lo.shape[0]
        counts = torch.zeros(c, bins + 2, dtype=torch.int64, device=lo.device)
        vmin = torch.full((c,), float("inf"), dtype=torch.float64, device=lo.device)
        return cls(lo.clone(), hi.clone(), counts, vmin, -vmin)

    @property
    def bins(self) -> int:
        return int(self.counts.shape[1] - 2)

    @property
    def channels(self) -> int:
        return int(self.counts.shape[0])

    @property
    def total(self) -> Tensor:
        """`(C,)` number of values counted per channel."""
        return self.counts.sum(dim=1)

    @property
    def bin_width(self) -> Tensor:
        """`(C,)` width of the regular bins: the in-range quantile error bound."""
        return (self.hi - self.lo) / self.bins

    def update(self, x: Tensor) -> ChannelHistogram:
        """Count a `(B, C, ...)` batch (in place); returns self.

        Bin indices are computed in float32 (float64 for float64 input) straight on the `(B, C, ...)`
        layout, without a channels-first copy: a value within float32 rounding of a bin edge may
        land in the neighbouring bin, well inside the one-bin error bound.
        """
        x = x.detach().to(self.lo.device)
        dims, c, b = _reduce_dims(x), self.channels, self.bins
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        lo = _channel_view(self.lo.to(dtype), x)
        per_bin = _channel_view((b / (self.hi - self.lo)).to(dtype), x)
        # floor -> [-1, b]; +1 shifts underflow to column 0 and overflow to column b + 1.
        col = ((x.to(dtype) - lo) * per_bin).floor_().clamp_(-1, b).to(torch.int64).add_(1)
        col += _channel_view(torch.arange(c, device=col.device) * (b + 2), x)
        self.counts += torch.bincount(col.reshape(-1), minlength=c * (b + 2)).view(c, b + 2)
        self.vmin = torch.minimum(self.vmin, x.amin(dim=dims).to(torch.float64))
        self.vmax = torch.maximum(self.vmax, x.amax(dim=dims).to(torch.float64))
        return self

    def merge(self, other: ChannelHistogram) -> ChannelHistogram:
        """Sum of two histograms with identical bin edges; returns a new histogram."""
        same = self.counts.shape == other.counts.shape
        if not same or not torch.equal(self.lo, other.lo.to(self.lo.device)):
            raise ValueError("cannot merge histograms with different bin edges")
        if not torch.equal(self.hi, other.hi.to(self.hi.device)):
            raise ValueError("cannot merge histograms with different bin edges")
        return ChannelHistogram(
            self.lo.clone(),
            self.hi.clone(),
            self.counts + other.counts.to(self.counts.device),
            torch.minimum(self.vmin, other.vmin.to(self.vmin.device)),
            torch.maximum(self.vmax, other.vmax.to(self.vmax.device)),
        )

    def _edges(self) -> Tensor:
        """`(C, bins + 3)` edges of all columns: vmin, lo, lo + w, ..., hi, vmax (tails may be empty)."""
        steps = torch.linspace(0.0, 1.0, self.bins + 1, dtype=torch.float64, device=self.lo.device)
        inner = self.lo[:, None] + (self.hi - self.lo)[:, None] * steps[None, :]
        left = torch.minimum(self.vmin, self.lo)[:, None]
        right = torch.maximum(self.vmax, self.hi)[:, None]
        return torch.cat([left, inner, right], dim=1)

    def quantile(self, q: float) -> Tensor:
        """Approximate per-channel q-quantile, `(C,)` float64 (uniform-within-bin interpolation).

        The target mass is `q * n`; inside the crossing bin [e_j, e_j+1] holding k values with
        cumulative count c_j before it: value = e_j + (q * n - c_j) / k * (e_j+1 - e_j).
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        counts = self.counts.to(torch.float64)
        cum = counts.cumsum(dim=1)  # cum[:, j] = mass up to the right edge of column j
        target = q * cum[:, -1:]
        col = torch.searchsorted(cum, target, side="left").clamp(max=self.bins + 1)
        before = torch.where(
            col > 0, cum.gather(1, (col - 1).clamp_min(0)), torch.zeros_like(target)
        )
        inside = counts.gather(1, col)
        frac = ((target - before) / inside.clamp_min(1.0)).clamp(0.0, 1.0)
        edges = self._edges()
        left, right = edges.gather(1, col), edges.gather(1, col + 1)
        value = (left + frac * (right - left)).squeeze(1)
        # Clip to the observed support (a tail column's outer edge is the exact min / max).
        return torch.minimum(torch.maximum(value, self.vmin), self.vmax)

    def cdf(self, value: Tensor) -> Tensor:
        """Approximate per-channel fraction of values `< value` (`value`: `(C,)`), same
        uniform-within-bin model as `quantile`."""
        counts = self.counts.to(torch.float64)
        edges = self._edges()
        v = value.to(torch.float64).to(edges.device)[:, None]
        width = (edges[:, 1:] - edges[:, :-1]).clamp_min(1e-300)
        covered = ((v - edges[:, :-1]) / width).clamp(0.0, 1.0)
        return (counts * covered).sum(dim=1) / counts.sum(dim=1).clamp_min(1.0)

    def to_flat(self) -> Tensor:
        """Counts and tails as float64 (exact for counts < 2^53), the wire format of `gather_merge`."""
        return torch.cat([self.counts.to(torch.float64).reshape(-1), self.vmin, self.vmax])

    def from_flat(self, flat: Tensor) -> ChannelHistogram:
        """Inverse of `to_flat` for a histogram with this one's edges."""
        c, width = self.channels, self.bins + 2
        flat = flat.to(self.lo.device)
        counts = flat[: c * width].round().to(torch.int64).view(c, width)
        vmin, vmax = flat[c * width : c * width + c], flat[c * width + c :]
        return ChannelHistogram(
            self.lo.clone(), self.hi.clone(), counts, vmin.clone(), vmax.clone()
        )


Accumulator = ChannelMoments | ChannelHistogram
_A = TypeVar("_A", ChannelMoments, ChannelHistogram)


def gather_merge(acc: _A) -> _A:
    """Merge one accumulator across all torch.distributed ranks (identity when not initialized).

    Every rank all-gathers the others' flat states and merges them in rank order, so all ranks end
    with the same result. Histograms must share bin edges (build them from the same pilot on every
    rank).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return acc
    flat = acc.to_flat()
    if dist.get_backend() == "nccl":
        flat = flat.cuda()
    parts = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, flat)
    merged = acc.from_flat(parts[0])
    for part in parts[1:]:
        merged = merged.merge(acc.from_flat(part))
    return merged
