"""Latent normalization between the store's raw latents and the denoiser's space.

    z_n = (z_raw - shift_c) * scale_c          z_raw = z_n / scale_c + shift_c

With store statistics (`lplkit stats`): shift_c = mean_c, scale_c = 1 / std_c (per channel).
Without: the autoencoder's own factors, shift = shift_factor (0 when absent), scale = scaling_factor.
The values are saved as `RUN_DIR/normalization.json` so sampling maps back identically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class LatentNormalizer:
    """Per-channel affine map raw <-> normalized; `shift`/`scale` are length-C lists."""

    shift: tuple[float, ...]
    scale: tuple[float, ...]
    source: str  # "stats" or "autoencoder"

    def _vec(self, values: tuple[float, ...], like: Tensor) -> Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    def normalize(self, z_raw: Tensor) -> Tensor:
        """`z_n = (z_raw - shift) * scale` on (B, C, h, w)."""
        return (z_raw - self._vec(self.shift, z_raw)) * self._vec(self.scale, z_raw)

    def unnormalize(self, z_n: Tensor) -> Tensor:
        """`z_raw = z_n / scale + shift` on (B, C, h, w)."""
        return z_n / self._vec(self.scale, z_n) + self._vec(self.shift, z_n)

    @classmethod
    def from_autoencoder(cls, info: dict[str, Any], channels: int) -> LatentNormalizer:
        """From a manifest's autoencoder info (`scaling_factor`, `shift_factor`)."""
        scale = float(info.get("scaling_factor") or 1.0)
        shift = float(info.get("shift_factor") or 0.0)
        return cls(shift=(shift,) * channels, scale=(scale,) * channels, source="autoencoder")

    @classmethod
    def from_stats(cls, mean: list[float], std: list[float]) -> LatentNormalizer:
        """From per-channel latent statistics: shift = mean, scale = 1 / std."""
        return cls(
            shift=tuple(float(m) for m in mean),
            scale=tuple(1.0 / float(s) for s in std),
            source="stats",
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LatentNormalizer:
        """From the `{"shift", "scale", "source"}` record a run keeps (run.json's
        `normalization`, a base's record, `normalization.json`)."""
        return cls(
            shift=tuple(float(v) for v in record["shift"]),
            scale=tuple(float(v) for v in record["scale"]),
            source=str(record["source"]),
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> LatentNormalizer:
        return cls.from_record(json.loads(path.read_text()))
