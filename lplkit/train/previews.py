"""The training-time preview grid: a callback writing `samples/step_XXXXXXXX.png` from the EMA model.

    z ~ sampler(model, objective) in the normalized space   (lplkit.diffusion.samplers, fixed seed + labels)
    images = AE.decode(z / scale + shift)

Sampling a finished run (or a base) into images/grid/npz is `lplkit.diffusion.generate.sample_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lplkit.diffusion import text_conditioning as tc
from lplkit.diffusion.image_files import save_grid
from lplkit.diffusion.objectives import Objective
from lplkit.diffusion.samplers import sample
from lplkit.train.config import TrainConfig
from lplkit.train.normalization import LatentNormalizer

__all__ = ["make_sample_grid"]


def make_sample_grid(
    cfg: TrainConfig,
    objective: Objective,
    normalizer: LatentNormalizer,
    vae: Any,  # a diffusers autoencoder (its decode() returns an output with .sample)
    shape: tuple[int, int, int],
    num_classes: int | None,
    text: dict[str, torch.Tensor] | None = None,
) -> Callable[[nn.Module, int, Path], Path]:
    """A callback writing `samples/step_XXXXXXXX.png` from the EMA model (fixed seed and labels;
    a text model: `text`, the cached condition of `log.sample_n` fixed store rows' captions)."""

    def grid(model: nn.Module, step: int, out_dir: Path) -> Path:
        n = cfg.log.sample_n
        gen = torch.Generator().manual_seed(cfg.seed)
        labels = torch.arange(n) % num_classes if num_classes else None
        dev = next(model.parameters()).device
        cond = None if text is None else tc.to_device(text, dev)
        z = sample(model, objective, (n, *shape), labels=labels, text=cond,
                   steps=cfg.log.sample_steps, generator=gen, device=dev)  # fmt: skip
        with torch.no_grad():
            images = vae.decode(normalizer.unnormalize(z).to(dev)).sample
        return save_grid(images.clamp(-1, 1).cpu(), out_dir / f"step_{step:08d}.png")

    return grid
