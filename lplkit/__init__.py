"""lplkit: latent diffusion training with a Latent Perceptual Loss.

Heavy dependencies (torch, diffusers, zarr) are imported by the submodules that need them, never here,
so `lplkit --help` stays instant.
"""

__version__ = "0.1.0"

from lplkit.moved_modules import install as _install_moved_modules

_install_moved_modules()  # old module paths (lplkit.lpl_presets, ...) stay importable
