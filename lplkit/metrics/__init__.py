"""Image-set metrics: SWD on Laplacian pyramids, radial power spectra, Fréchet (Inception) distance.

Names are re-exported here lazily, so importing the package (e.g. `lplkit.metrics.config` for the
CLI's `--help`) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lplkit.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lplkit.metrics.frechet import GaussianStats, frechet_distance
    from lplkit.metrics.pyramid import laplacian_pyramid, reconstruct
    from lplkit.metrics.spectrum import PowerSpectrum, SpectrumResult, spectrum_distance
    from lplkit.metrics.swd import (
        SWDConfig,
        SWDDescriptors,
        SWDResult,
        sliced_wasserstein,
        swd_between,
    )

_EXPORTS = {
    "GaussianStats": "frechet",
    "frechet_distance": "frechet",
    "laplacian_pyramid": "pyramid",
    "reconstruct": "pyramid",
    "PowerSpectrum": "spectrum",
    "SpectrumResult": "spectrum",
    "spectrum_distance": "spectrum",
    "SWDConfig": "swd",
    "SWDDescriptors": "swd",
    "SWDResult": "swd",
    "sliced_wasserstein": "swd",
    "swd_between": "swd",
}
__all__ = [
    "GaussianStats",
    "PowerSpectrum",
    "SWDConfig",
    "SWDDescriptors",
    "SWDResult",
    "SpectrumResult",
    "frechet_distance",
    "laplacian_pyramid",
    "reconstruct",
    "sliced_wasserstein",
    "spectrum_distance",
    "swd_between",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
