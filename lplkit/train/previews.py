"""The training-time preview grid: a callback writing `samples/step_XXXXXXXX.png` from the EMA model.

    z ~ sampler(model, objective) in the normalized space   (lplkit.diffusion.samplers, fixed seed + labels)
    images = AE.decode(z / scale + shift)

A text model's grid samples the cached text of the store's first N ok rows (cycled when it has
fewer) at guidance 1, and draws each row's caption under its image (`preview_text`).

Sampling a finished run (or a base) into images/grid/npz is `lplkit.diffusion.generate.sample_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lplkit.diffusion import text_conditioning as tc
from lplkit.diffusion.image_files import save_captioned_grid, save_grid
from lplkit.diffusion.objectives import Objective
from lplkit.diffusion.samplers import sample
from lplkit.train.config import TrainConfig
from lplkit.train.normalization import LatentNormalizer

__all__ = ["make_sample_grid", "preview_text"]

PreviewText = tuple[tc.TextCond, list[str]]  # (condition of N rows, their captions)


def preview_text(store: Any, names: list[str], families: list[str], n: int) -> PreviewText:
    """The cached text (combined as in training) and captions of the store's first `n` ok rows."""
    ok = np.asarray(store.ok_positions)
    positions = ok[np.arange(n) % len(ok)]
    cached = store.read_text(positions, names)
    cond = tc.combine([(f, cached[name]) for name, f in zip(names, families, strict=True)])
    captions = store.index_column("caption")
    return cond, [str(captions[int(p)].as_py() or "") for p in positions]


def make_sample_grid(
    cfg: TrainConfig,
    objective: Objective,
    normalizer: LatentNormalizer,
    vae: Any,  # a diffusers autoencoder (its decode() returns an output with .sample)
    shape: tuple[int, int, int],
    num_classes: int | None,
    text: PreviewText | None = None,
) -> Callable[[nn.Module, int, Path], Path]:
    """A callback writing `samples/step_XXXXXXXX.png` from the EMA model (fixed seed and labels;
    a text model: `text` = `preview_text(...)`, captioned grid)."""

    def grid(model: nn.Module, step: int, out_dir: Path) -> Path:
        n = cfg.log.sample_n
        gen = torch.Generator().manual_seed(cfg.seed)
        labels = torch.arange(n) % num_classes if num_classes else None
        dev = next(model.parameters()).device
        cond = None if text is None else tc.to_device(text[0], dev)
        z = sample(model, objective, (n, *shape), labels=labels, text=cond,
                   steps=cfg.log.sample_steps, generator=gen, device=dev)  # fmt: skip
        with torch.no_grad():
            images = vae.decode(normalizer.unnormalize(z).to(dev)).sample.clamp(-1, 1).cpu()
        path = out_dir / f"step_{step:08d}.png"
        if text is not None:
            return save_captioned_grid(images, text[1], path)
        return save_grid(images, path)

    return grid
