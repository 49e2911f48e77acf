"""`StatsConfig`: what `lplkit stats` computes, and its flags (`STATS_FLAGS`); torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from lplkit.config import MAX_BATCH, ConfigFlag, ranged

__all__ = ["STATS_FLAGS", "StatsConfig"]


@dataclass
class StatsConfig:
    """Settings of one `lplkit stats` run (`lplkit.stats.run_stats` takes them as arguments)."""

    store: str
    vae: str | None = None  # None: the store's own autoencoder
    subfolder: str | None = None
    samples: int = ranged(1024, ge=0)  # 0 = all items
    depth: int | None = ranged(None, ge=0, le=64)  # None = every decoder stage
    batch_size: int = ranged(16, ge=1, le=MAX_BATCH)
    seed: int = ranged(0, ge=0)
    device: str = "auto"
    bins: int = ranged(2048, ge=2, le=1 << 20)
    post_quant_conv: bool = True
    latents_only: bool = False


# Every `lplkit stats` option, declared once; the old spellings --subfolder and --depth stay.
STATS_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("store", "STORE", "Latent store URL or path (a finished `lplkit encode`)."),
    ConfigFlag("vae", "--vae", "Autoencoder (default: the store's own; another one is refused)."),
    ConfigFlag(
        "subfolder",
        "--vae-subfolder",
        "Subfolder of --vae (as in encode/train).",
        aliases=("--subfolder",),
        name="subfolder",
    ),
    ConfigFlag("samples", "--samples", "Items (position, flip) to use; 0 = all of them."),
    ConfigFlag(
        "depth",
        "--lpl-depth",
        "Decoder up blocks tapped after the mid block, as train --lpl-depth (default: all).",
        aliases=("--depth",),
        name="depth",
    ),
    ConfigFlag("batch_size", "--batch-size", "Items per decoder call."),
    ConfigFlag("seed", "--seed", "Seed of the item subset and latent noise."),
    ConfigFlag("device", "--device", "torch device; auto = CUDA if present."),
    ConfigFlag("bins", "--bins", "Histogram bins per channel (quantiles)."),
    ConfigFlag(
        "post_quant_conv",
        "--post-quant-conv/--no-post-quant-conv",
        "Tap after the AE's post_quant_conv (the true decoder); --no-... matches an LPL with "
        "apply_post_quant_conv=false (diffusers-reference).",
    ),
    ConfigFlag("latents_only", "--latents-only", "Skip the decoder: latent statistics only."),
)
