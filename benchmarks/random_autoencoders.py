"""Random-init AutoencoderKLs shared by the benchmark scripts (no weights from any hub).

`tiny` = the test-suite tiny AE (f=4, 8-16 channels), `small` (f=8, 32-128 channels), `sd` = the
SD / SDXL VAE layout (128-256-512-512, 2 resnets per block, f=8). Seeded, so every script and run
times the same network.
"""

from __future__ import annotations

import torch

KINDS = ("tiny", "small", "sd")


def random_autoencoder(kind: str):
    """A seeded random-init diffusers AutoencoderKL of the given size, in eval mode."""
    from diffusers import AutoencoderKL

    if kind not in KINDS:
        raise ValueError(f"unknown autoencoder size {kind!r}; choose from {KINDS}")
    torch.manual_seed(0)
    if kind == "sd":
        return AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=256,
        ).eval()
    chans = (8, 16, 16) if kind == "tiny" else (32, 64, 128, 128)
    return AutoencoderKL(
        block_out_channels=chans,
        down_block_types=("DownEncoderBlock2D",) * len(chans),
        up_block_types=("UpDecoderBlock2D",) * len(chans),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4 if kind == "tiny" else 32,
    ).eval()
