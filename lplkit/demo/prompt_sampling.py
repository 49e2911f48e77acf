"""Sample a text-to-image run or base for given prompts (the t2i demo's sampler stage).

    cond      = combine(encoder_k(prompts) for the run's recorded text encoders)  (SD3's rule)
    z0        = sampler(denoiser, objective, noise[rows], text=cond, null_text=cond(""), w)
    images    = AE.decode(z0 / scale + shift)

The prompts are encoded with the encoders recorded in the run's ``run.json``
(`lplkit.diffusion.prompts`), their states rounded to the dtype the store cached them in (float16
by default), so a prompt that is a training caption conditions the model exactly as the cached
caption did. ``noise_rows[i]`` picks image ``i``'s initial noise from one seeded draw, so
the same row index means the same noise across prompts and across runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lplkit.config import from_dict
from lplkit.diffusion import text_conditioning as tc
from lplkit.diffusion.image_files import to_uint8
from lplkit.diffusion.prompts import load_run_text_encoders
from lplkit.diffusion.samplers import sample
from lplkit.train.base import BUNDLED_BASES, load_base, load_run_model
from lplkit.train.builders import load_decoder_vae, make_objective
from lplkit.train.config import TrainConfig
from lplkit.train.normalization import LatentNormalizer

__all__ = ["load_denoiser", "sample_prompts"]


def load_denoiser(spec: str | Path) -> tuple[Any, dict[str, Any], int | None]:
    """(model, run.json, step) of a bundled base, a base directory or a run's newest checkpoint
    (EMA weights)."""
    spec = str(spec)
    if spec in BUNDLED_BASES or (Path(spec) / "model.safetensors").is_file():
        base = load_base(spec)
        return base.model, base.info, base.step
    _, info, model, step = load_run_model(Path(spec))
    return model, info, step


def sample_prompts(
    spec: str | Path,
    prompts: Sequence[str],
    *,
    noise_rows: Sequence[int] | None = None,
    seed: int = 0,
    steps: int = 32,
    guidance: float = 2.0,
    sampler: str | None = None,
    batch_size: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """Images ``(N, H, W, 3)`` uint8 of run/base ``spec`` for ``prompts`` (module doc)."""
    model, info, _ = load_denoiser(spec)
    model = model.to(device).eval()
    objective = make_objective(from_dict(TrainConfig, {"objective": info["objective"]}))
    normalizer = LatentNormalizer.from_record(info["normalization"])
    ae: Any = load_decoder_vae(
        from_dict(TrainConfig, {}),
        {"autoencoder": info["store"]["autoencoder"]},
        torch.device(device),
    )
    encoders = load_run_text_encoders(info, device=device)
    cond = encoders.encode(prompts, as_cached=True)
    null = encoders.encode([""], as_cached=True)
    rows = np.arange(len(prompts)) if noise_rows is None else np.asarray(noise_rows)
    shape = tuple(info["latent_shape"])
    noise = torch.randn(
        (int(rows.max()) + 1, *shape), generator=torch.Generator().manual_seed(seed)
    )
    noise = noise[torch.from_numpy(rows)]
    out = []
    for lo in range(0, len(prompts), batch_size):
        hi = min(len(prompts), lo + batch_size)
        text = tc.to_device({k: v[lo:hi] for k, v in cond.items()}, device)
        z = sample(model, objective, (hi - lo, *shape), text=text, null_text=tc.to_device(null, device),
                   steps=steps, guidance=guidance, sampler=sampler,  # type: ignore[arg-type]
                   noise=noise[lo:hi].to(device), device=device)  # fmt: skip
        with torch.no_grad():
            x = ae.decode(normalizer.unnormalize(z)).sample.clamp(-1, 1).float().cpu()
        out.append(to_uint8(x))
    return np.concatenate(out)
