"""The Latent Perceptual Loss: decoder features of the predicted and the target clean latent.

Submodules, in the order the loss uses them:

- `config`: `LPLConfig` (every loss option), the presets (`paper`, `paper-dataset`, ...) and their
  resolution (preset first, explicit options over it). Torch-free: the CLI builds flags from it.
- `decoder_taps`: `DecoderTaps`, the frozen decoder run up to the tapped depth, returning features.
- `crops`: latent crop windows (`crop=16`), drawn from the trainer's seeded generator.
- `terms`: the per-layer math (normalization, outlier mask, distance, layer weights).
- `loss`: `LatentPerceptualLoss`, the module the trainer calls on the gated samples.

Names are re-exported here lazily, so `import lplkit.lpl.config` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lplkit.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lplkit.lpl.config import LPL_PRESETS, LPLConfig, resolve_lpl_config
    from lplkit.lpl.decoder_taps import DecoderTaps, LayerInfo
    from lplkit.lpl.loss import FeatureStats, LatentPerceptualLoss

_EXPORTS = {
    "FeatureStats": "loss",
    "LatentPerceptualLoss": "loss",
    "DecoderTaps": "decoder_taps",
    "LayerInfo": "decoder_taps",
    "LPLConfig": "config",
    "LPL_PRESETS": "config",
    "resolve_lpl_config": "config",
}
__all__ = [
    "LPL_PRESETS",
    "DecoderTaps",
    "FeatureStats",
    "LPLConfig",
    "LatentPerceptualLoss",
    "LayerInfo",
    "resolve_lpl_config",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
