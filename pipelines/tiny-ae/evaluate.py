"""Measure the tiny autoencoder's reconstruction PSNR on OpenMoji and draw originals vs reconstructions.

    .venv/bin/python pipelines/tiny-ae/evaluate.py --vae lplkit/assets/tiny-ae-openmoji \
        --image docs/img/tiny-ae-recon.png --json pipelines/tiny-ae/metrics.json

Reconstruction = decode(posterior mean), both images quantized to uint8, and per image

    PSNR = 10 log10(255^2 / mean((x - x_hat)^2))

averaged over the split (mean of per-image PSNR). `test` is the held-out split (every 10th glyph).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from lplkit.data.openmoji import OpenMojiSource


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images_NHWC: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 reconstructions through the posterior mean."""
    out = []
    for i in range(0, len(images_NHWC), batch_size):
        x = (
            torch.from_numpy(images_NHWC[i : i + batch_size]).permute(0, 3, 1, 2).float() / 127.5
            - 1
        )
        x_hat = vae.decode(vae.encode(x).latent_dist.mean).sample
        out.append(((x_hat.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of two uint8 batches (N, H, W, C)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))


def side_by_side(
    originals: np.ndarray, recons: np.ndarray, per_row: int, scale: int
) -> Image.Image:
    """Rows alternating originals / reconstructions, `per_row` glyphs wide, upscaled by `scale`."""
    rows = []
    for start in range(0, len(originals) - per_row + 1, per_row):
        rows.append(np.concatenate(originals[start : start + per_row], axis=1))
        rows.append(np.concatenate(recons[start : start + per_row], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", type=Path, default=Path("lplkit/assets/tiny-ae-openmoji"))
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--image", type=Path, help="write the side-by-side PNG here")
    parser.add_argument("--json", type=Path, help="write the metrics here")
    parser.add_argument("--show", type=int, default=24, help="held-out glyphs in the image")
    args = parser.parse_args()
    torch.set_num_threads(1)
    vae = AutoencoderKL.from_pretrained(args.vae).eval()

    metrics: dict = {"vae": str(args.vae), "res": args.res}
    for split in ("test", "train"):
        source = OpenMojiSource(args.res, split=split)
        images = np.stack([np.asarray(source.render(i)) for i in range(len(source))])
        recons = reconstruct(vae, images)
        psnr = psnr_uint8(images, recons)
        metrics[split] = {
            "count": len(images),
            "psnr_mean_db": round(float(psnr.mean()), 2),
            "psnr_median_db": round(float(np.median(psnr)), 2),
            "psnr_min_db": round(float(psnr.min()), 2),
        }
        if split == "test" and args.image:
            args.image.parent.mkdir(parents=True, exist_ok=True)
            side_by_side(images[: args.show], recons[: args.show], 12, 2).save(args.image)
    print(json.dumps(metrics, indent=2))
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    main()
