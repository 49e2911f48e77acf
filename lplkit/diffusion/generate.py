"""Sampling from a run directory or a base: config + newest checkpoint -> images, grid, `.npz`.

    z ~ sampler(denoiser, objective) in the normalized space   (lplkit.diffusion.samplers: DDIM / Euler / Heun)
    z_raw = z / scale + shift                                  (run.json normalization)
    images = AE.decode(z_raw)                                  (clamped to [-1, 1])

Deterministic for a seed: all initial noise is drawn up front from one generator, so the result
does not depend on the batch size used to run the model. This is the sampler layer of the data
flow (above the trainer, below evaluation); `lplkit sample` renders it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lplkit.config import check_fields, from_dict
from lplkit.diffusion.image_files import save_grid, save_npz, to_uint8
from lplkit.diffusion.sample_config import SampleConfig
from lplkit.diffusion.samplers import sample
from lplkit.distributed import resolve_device
from lplkit.errors import ConfigError
from lplkit.train.base import BUNDLED_BASES, base_dir, load_base, load_run_model
from lplkit.train.builders import load_decoder_vae, make_objective
from lplkit.train.config import TrainConfig
from lplkit.train.normalization import LatentNormalizer
from lplkit.train.previews import make_sample_grid  # noqa: F401  (old `lplkit.train.sampling` name)

__all__ = ["sample_run"]


def sample_run(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    ema: bool = True,
    n: int = 16,
    steps: int = 50,
    guidance: float = 1.0,
    sampler: str | None = None,
    seed: int = 0,
    labels: list[int] | None = None,
    batch_size: int = 32,
    device: str = "auto",
    vae: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Sample `n` images from the latest checkpoint of `run_dir`; returns a JSON-able summary."""
    check_fields(
        SampleConfig, "sample", n=n, steps=steps, guidance=guidance, seed=seed,
        batch_size=batch_size, labels=labels,
    )  # fmt: skip
    dev = resolve_device(device)
    if str(run_dir) in BUNDLED_BASES or (Path(run_dir) / "model.safetensors").is_file():
        # a base (bundled name or exported directory): run.json + weights, no config.json
        base = load_base(str(run_dir))
        info, step = base.info, base.step
        model = base.model
        tcfg = from_dict(TrainConfig, {"objective": info["objective"]})
        if str(run_dir) in BUNDLED_BASES:
            if out is None:
                raise ConfigError(f"sampling the bundled base {run_dir!r} needs --out DIR")
            run_dir = base_dir(str(run_dir))
        run_dir = Path(run_dir)
    else:
        run_dir = Path(run_dir)
        tcfg, info, model, step = load_run_model(run_dir, ema=ema)
    if info["num_classes"] and labels and max(labels) >= info["num_classes"]:
        raise ConfigError(
            f"--labels: class {max(labels)} is out of range; this run has {info['num_classes']} "
            f"classes (0..{info['num_classes'] - 1})"
        )
    model = model.to(dev).eval()
    objective = make_objective(tcfg)
    normalizer = LatentNormalizer.from_record(info["normalization"])
    if vae is not None:
        tcfg.lpl.vae = vae
    ae: Any = load_decoder_vae(tcfg, {"autoencoder": info["store"]["autoencoder"]}, dev)

    num_classes = info["num_classes"]
    if labels is not None and len(labels) != n:
        labels = [labels[i % len(labels)] for i in range(n)]
    y_all = None
    if num_classes:
        y_all = torch.tensor(labels) if labels is not None else torch.arange(n) % num_classes
    shape = tuple(info["latent_shape"])
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *shape), generator=gen)
    images = []
    for lo in range(0, n, batch_size):
        hi = min(n, lo + batch_size)
        y = None if y_all is None else y_all[lo:hi].to(dev)
        z = sample(model, objective, (hi - lo, *shape), labels=y, steps=steps, guidance=guidance,
                   sampler=sampler, noise=noise[lo:hi].to(dev), device=dev)  # type: ignore[arg-type]  # fmt: skip
        with torch.no_grad():
            images.append(ae.decode(normalizer.unnormalize(z)).sample.clamp(-1, 1).float().cpu())
        if progress is not None:
            progress(hi, n)
    imgs = torch.cat(images)
    out_dir = Path(out) if out is not None else run_dir / "samples" / f"step_{step or 0:08d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    # One PNG per sample in images/ (so `lplkit eval --samples OUT/images` sees only samples), the
    # grid and the npz beside it.
    (out_dir / "images").mkdir(exist_ok=True)
    for i, arr in enumerate(to_uint8(imgs)):
        Image.fromarray(arr).save(out_dir / "images" / f"{i:06d}.png")
    grid = save_grid(imgs, out_dir / "grid.png")
    npz = save_npz(imgs, out_dir / "samples.npz")
    return {
        "run_dir": str(run_dir),
        "checkpoint_step": step,
        "weights": "ema" if ema else "model",
        "n": n,
        "sampler": sampler or ("heun" if tcfg.objective.kind == "flow" else "ddim"),
        "steps": steps,
        "cfg": guidance,  # the --json key the CLI has always written
        "seed": seed,
        "labels": None if y_all is None else y_all.tolist(),
        "out": str(out_dir),
        "images": str(out_dir / "images"),
        "grid": str(grid),
        "npz": str(npz),
    }
