"""lplkit: latent diffusion training with a Latent Perceptual Loss.

Heavy dependencies (torch, diffusers, zarr) are imported by the submodules that need them, never here,
so `lplkit --help` stays instant.
"""

__version__ = "0.1.0"
