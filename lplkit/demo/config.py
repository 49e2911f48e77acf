"""`DemoConfig`: the settings of `lplkit demo` (`lplkit.demo.run_demo`), and its flags (`DEMO_FLAGS`).

Torch-free, so that `lplkit demo --help` is built from it without importing the stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lplkit.config import MAX_BATCH, MAX_SAMPLER_STEPS, ConfigFlag, check_ranges, ranged
from lplkit.errors import ConfigError

__all__ = ["DEMO_FLAGS", "DemoConfig"]


@dataclass
class DemoConfig:
    """Settings of one demo run; the defaults fit ~4 minutes on 2 CPU cores."""

    out: str = "demo-out"
    res: int = ranged(64, ge=8, le=8192)
    limit: int | None = ranged(None, ge=1)  # encode only the first N glyphs of each split (CI)
    base: str | None = "openmoji-base"  # pre-trained weights; None = both arms from scratch
    model: str = "UNet-S"
    objective: str = "flow"
    steps: int = ranged(60, ge=1)  # post-training steps of each arm
    # the LPL arm adds the LPL in the last fraction of its steps
    lpl_fraction: float = ranged(1.0, ge=0.0, le=1.0)
    lpl_weight: float = ranged(1.0, ge=0.0)
    batch_size: int = ranged(32, ge=1, le=MAX_BATCH)
    lr: float = ranged(1e-4, gt=0.0)
    ema_decay: float = ranged(0.99, ge=0.0, lt=1.0)
    stats_samples: int = ranged(256, ge=1)
    n_samples: int = ranged(64, ge=1, le=MAX_BATCH)
    sample_steps: int = ranged(32, ge=1, le=MAX_SAMPLER_STEPS)
    guidance: float = ranged(2.0, ge=0.0)
    eval_n: int = ranged(256, ge=1)  # reference (train store) images
    swd_dirs: int = ranged(128, ge=1, le=1 << 16)
    seed: int = ranged(0, ge=0)
    device: str = "cpu"

    def validate(self) -> None:
        """Reject settings the stages would only fail on later."""
        check_ranges(self, "demo: ")
        if self.objective not in ("flow", "eps", "v"):
            raise ConfigError(f"demo: objective must be flow, eps or v, got {self.objective!r}")
        if self.base and self.res != 64:
            raise ConfigError(
                f"demo: the bundled base was trained at 64 px; --res {self.res} needs --base none"
            )

    @property
    def lpl_start(self) -> int:
        """First step of the LPL arm with the LPL term."""
        return self.steps - round(self.lpl_fraction * self.steps)

    @property
    def store(self) -> Path:
        """The train split's latent store."""
        return Path(self.out) / f"openmoji-{self.res}.zarr"

    @property
    def test_store(self) -> Path:
        """The held-out test split's latent store (the floor)."""
        return Path(self.out) / f"openmoji-{self.res}-test.zarr"

    def run_dir(self, arm: str) -> Path:
        """The training run directory of ``arm`` (baseline or lpl)."""
        return Path(self.out) / "runs" / arm


DEMO_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("out", "--out", "Output directory (re-run = resume)."),
    ConfigFlag("res", "--res", "Image resolution."),
    ConfigFlag("limit", "--limit", "Encode only the first N glyphs of each split (a quick check)."),
    ConfigFlag(
        "base",
        "--base",
        "Pre-trained denoiser both arms start from: a bundled base, a run directory, or none "
        "(from scratch).",
    ),
    ConfigFlag("model", "--model", "Denoiser (see lplkit.diffusion.denoisers); must match --base."),
    ConfigFlag("objective", "--objective", "flow, eps or v."),
    ConfigFlag("steps", "--steps", "Post-training steps of each arm."),
    ConfigFlag(
        "lpl_fraction",
        "--lpl-fraction",
        "LPL arm: last fraction of its steps trained with the LPL.",
    ),
    ConfigFlag("lpl_weight", "--lpl-weight", "w in L + w LPL."),
    ConfigFlag("batch_size", "--batch-size", "Training batch."),
    ConfigFlag("lr", "--lr", "Post-training learning rate."),
    ConfigFlag("n_samples", "--n", "Images to sample per arm (grid + eval)."),
    ConfigFlag("sample_steps", "--sample-steps", "Sampler steps."),
    ConfigFlag("guidance", "--cfg", "Classifier-free guidance scale.", aliases=("--guidance",)),
    ConfigFlag("eval_n", "--eval-n", "Reference images for eval."),
    ConfigFlag("swd_dirs", "--swd-dirs", "SWD directions per repeat."),
    ConfigFlag("stats_samples", "--stats-samples", "Items for `stats`."),
    ConfigFlag("seed", "--seed", "Seed of every stage."),
    ConfigFlag("device", "--device", "cpu, cuda ..."),
)
