"""Latent and decoder-feature statistics of a store (`lplkit stats`), cached in the store.

Submodules:

- `accumulators`: streaming per-channel moments and histograms (mergeable across ranks).
- `compute`: `compute_stats`, one pass over sampled items -> `StoreStats` (latent + per-layer
  decoder-feature statistics); `select_items` picks the sample.
- `storage`: `write_stats` / `load_stats`, the `stats/` group inside the store and its hash checks.
- `job`: `run_stats`, the whole command (autoencoder check, distributed ranks, progress, write).

Names are re-exported here lazily, so importing the package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lplkit.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lplkit.stats.compute import (
        Q_HIGH,
        Q_LOW,
        LayerStats,
        StoreStats,
        compute_stats,
        item_latents,
        select_items,
    )
    from lplkit.stats.job import run_stats, stats_summary
    from lplkit.stats.storage import load_stats, write_stats

_EXPORTS = {
    "LayerStats": "compute",
    "StoreStats": "compute",
    "compute_stats": "compute",
    "item_latents": "compute",
    "select_items": "compute",
    "Q_LOW": "compute",
    "Q_HIGH": "compute",
    "run_stats": "job",
    "stats_summary": "job",
    "load_stats": "storage",
    "write_stats": "storage",
}
__all__ = [
    "Q_HIGH",
    "Q_LOW",
    "LayerStats",
    "StoreStats",
    "compute_stats",
    "item_latents",
    "load_stats",
    "run_stats",
    "select_items",
    "stats_summary",
    "write_stats",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
