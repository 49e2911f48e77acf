"""`run_stats`: open a store, check and load its autoencoder, compute, record provenance, write.

The one library call behind `lplkit stats` (the CLI joins the process group with
`lplkit.distributed.init_distributed` and renders). Works single-process or under torchrun with an
initialized default process group: every rank computes its slice, all ranks get
the merged result, and rank 0 alone writes the `stats/` group.

A stats run is not resumable part-way: on SIGTERM or SIGUSR1 (`lplkit.preemption`) every rank
stops after its batch in flight, the ranks agree, nothing is written and `Preempted` (exit 75) is
raised; the same command then computes the statistics from the start (they depend only on the
store and the flags, so the result equals an uninterrupted run's). Ctrl-C raises `Interrupted`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from lplkit import __version__
from lplkit.autoencoders.loading import autoencoder_info, check_store_autoencoder, load_autoencoder
from lplkit.config import check_fields
from lplkit.distributed import DistInfo, group_rank_world
from lplkit.errors import ConfigError, Interrupted, Preempted
from lplkit.lpl.decoder_taps import DecoderTaps
from lplkit.preemption import stop_agreed, stop_signals
from lplkit.stats.compute import (
    DEFAULT_BINS,
    DEFAULT_PILOT,
    MASK_STDS,
    Q_HIGH,
    Q_LOW,
    StoreStats,
    compute_stats,
)
from lplkit.stats.config import StatsConfig
from lplkit.stats.storage import store_content_hash, write_stats
from lplkit.store.reader import LatentStore
from lplkit.store.tooling import require_writable, store_writes

__all__ = ["DEFAULT_SAMPLES", "check_autoencoder", "run_stats", "stats_summary"]

DEFAULT_SAMPLES = 1024
_NOTHING_WRITTEN = (
    "nothing written, the store's current statistics (if any) are unchanged; re-run the same "
    "command to compute them"
)


def check_autoencoder(manifest: dict[str, Any], info: dict[str, Any], url: str) -> None:
    """Statistics must come from the store's own autoencoder (see `check_store_autoencoder`)."""

    check_store_autoencoder(
        manifest,
        info,
        url,
        fix="statistics must use the store's own autoencoder: drop --vae or pass that one",
    )


def _range(t: torch.Tensor) -> list[float]:
    return [float(t.min()), float(t.max())]


def stats_summary(stats: StoreStats) -> dict[str, Any]:
    """JSON-ready summary: latent statistics in full, per-layer ranges (the table's content)."""
    return {
        "latent": {
            "channels": int(stats.latent_mean.shape[0]),
            "count": stats.latent_count,
            "mean": stats.latent_mean.tolist(),
            "std": stats.latent_std.tolist(),
            "shift": stats.latent_shift.tolist(),
            "scale": stats.latent_scale.tolist(),
            "shift_factor": stats.shift_factor,
            "scaling_factor": stats.scaling_factor,
        },
        "layers": [
            {
                **layer.scalars(),
                "mean_range": _range(layer.mean),
                "std_range": _range(layer.std),
                "q_low_range": _range(layer.q_low),
                "q_high_range": _range(layer.q_high),
                "q_error_bound_max": float(layer.q_error_bound.max()),
            }
            for layer in stats.layers
        ],
    }


def run_stats(
    url: str,
    *,
    vae: str | None = None,
    subfolder: str | None = None,
    samples: int | None = DEFAULT_SAMPLES,
    depth: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    device: str = "cpu",
    bins: int = DEFAULT_BINS,
    pilot: int = DEFAULT_PILOT,
    features: bool = True,
    apply_post_quant_conv: bool = True,
    write: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[StoreStats, dict[str, Any]]:
    """Compute (and on rank 0 write) the statistics of the store at `url`.

    Args:
        vae: autoencoder spec; None = the one recorded in the store's manifest. Either way its
            config_hash must equal the manifest's (else `StoreMismatchError`).
        samples: items to use (None = all; see `lplkit.stats.select_items`).
        depth: decoder stages tapped after the first (None = all of them: stats for depth K serve
            every LPL depth <= K).
        features: False skips the decoder (latent statistics only).
        apply_post_quant_conv: tap the decoder after the AE's post_quant_conv (the true decoder);
            False matches an LPL that skips it (`diffusers-reference`).
        write: store the result in the store's `stats/` group (rank 0 only).

    Returns:
        (stats, meta) where meta is the provenance + summary written as the run's attributes.
    """

    if samples is not None and samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {samples}")
    check_fields(
        StatsConfig, "stats", samples=samples, depth=depth, batch_size=batch_size, seed=seed,
        bins=bins,
    )  # fmt: skip
    store = LatentStore.open(url)
    if write:  # before the work: a read-only store is one line now, not after the decoder pass
        require_writable(url, f"write statistics into {url}")
    manifest = store.manifest
    content_hash = store_content_hash(url, manifest)
    taps, info = None, dict(manifest.get("autoencoder") or {})
    if features:
        spec = vae if vae is not None else str(info.get("id"))
        sub = subfolder if vae is not None else info.get("subfolder")
        rev = None if vae is not None else info.get("revision")  # the commit that encoded it
        model = load_autoencoder(spec, subfolder=sub, device=device, revision=rev)
        info = autoencoder_info(model, spec, sub)
        check_autoencoder(manifest, info, url)
        taps = DecoderTaps(model, depth, apply_post_quant_conv=apply_post_quant_conv).to(device)
    rank, world = group_rank_world()
    try:
        with stop_signals() as stop:
            stats = compute_stats(
                store,
                taps,
                samples=samples,
                seed=seed,
                batch_size=batch_size,
                device=device,
                bins=bins,
                pilot=pilot,
                on_progress=on_progress,
                stop=stop,
            )
    except KeyboardInterrupt as exc:
        raise Interrupted(f"stats interrupted: {_NOTHING_WRITTEN}") from exc
    if stop_agreed(stop, DistInfo(rank=rank, world_size=world, device=torch.device(device))):
        raise Preempted(f"stats preempted by {stop.name}: {_NOTHING_WRITTEN}")
    meta: dict[str, Any] = {
        "format": 1,
        "lplkit_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "store": {"url": str(url), "content_hash": content_hash, "ok": len(store.ok_positions)},
        "autoencoder": {
            k: info.get(k) for k in ("id", "subfolder", "class", "config_hash", "weights_hash")
        },
        "depth": None if taps is None else taps.depth,
        "apply_post_quant_conv": apply_post_quant_conv,
        "sampling": {
            "items": len(stats.items) if stats.items is not None else 0,
            "requested": samples,
            "seed": seed,
            "flips": stats.meta["flips"],
            "noise": "numpy.random.default_rng([seed, position, flip]).standard_normal",
            "world_size": world,
        },
        "quantiles": {
            "low": Q_LOW,
            "high": Q_HIGH,
            "mask_stds": MASK_STDS,
            "method": "fixed-bin histogram",
            "bins": bins,
            "pilot": stats.meta["pilot"],
        },
        **stats_summary(stats),
    }
    stats.meta = meta
    if write and rank == 0:
        with store_writes(url, f"write statistics into {url}"):
            meta["run"] = write_stats(url, stats, meta)
    return stats, meta
