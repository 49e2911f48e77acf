"""Tiny diffusers models with deterministic random weights."""

from __future__ import annotations


def make_tiny_vae(seed: int = 0, *, latent_channels: int = 4, post_quant_conv: bool = True):
    """A small AutoencoderKL (f=4: 3 down/up blocks, mid block) with deterministic random weights."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.5,
        use_quant_conv=post_quant_conv,
        use_post_quant_conv=post_quant_conv,
    )
    return vae.eval()
