"""Image-set metrics: SWD on Laplacian pyramids, radial power spectra, Fréchet (Inception) distance."""

from lplkit.metrics.frechet import GaussianStats, frechet_distance
from lplkit.metrics.pyramid import laplacian_pyramid, reconstruct
from lplkit.metrics.spectrum import PowerSpectrum, SpectrumResult, spectrum_distance
from lplkit.metrics.swd import SWDConfig, SWDDescriptors, SWDResult, sliced_wasserstein, swd_between

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
