"""`ExportConfig`: what `lplkit export` writes, and its flags (`EXPORT_FLAGS`); torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from lplkit.config import MAX_SAMPLER_STEPS, ConfigFlag, ranged

__all__ = ["EXPORT_FLAGS", "ExportConfig"]


@dataclass
class ExportConfig:
    """Settings of one `lplkit export` call (`lplkit.export.export_run` takes them as arguments)."""

    run: str
    out: str
    ema: bool = True
    steps: int = ranged(50, ge=1, le=MAX_SAMPLER_STEPS)  # flow: the exported Euler grid
    vae: str | None = None


EXPORT_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("run", "--run", "Run directory written by `lplkit train`."),
    ConfigFlag("out", "--out", "Pipeline directory to write."),
    ConfigFlag("ema", "--ema/--no-ema", "EMA weights (default) or raw."),
    ConfigFlag("steps", "--steps", "Flow runs: the Euler step count the exported grid reproduces."),
    ConfigFlag("vae", "--vae", "Override the autoencoder."),
)
