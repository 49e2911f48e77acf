"""Tap the frozen autoencoder decoder: its intermediate features up to a chosen depth.

`DecoderTaps(vae, k)` runs the decoder's *own* modules in the decoder's own order and returns the
output of each stage:

    AutoencoderKL (SD, SDXL, SD3, FLUX layouts):
        z -> post_quant_conv (if the AE has one and it is enabled) -> decoder.conv_in
          -> mid_block [feature 0] -> up_blocks[0] [1] -> ... -> up_blocks[k-1] [k]
    AutoencoderDC (DC-AE / SANA): its decoder has no mid block and runs its stages in reverse
    index order, after conv_in plus the channel-repeat input shortcut:
        z -> conv_in(z) + repeat(z) -> up_blocks[n-1] [feature 0] -> up_blocks[n-2] [1] -> ...

The final norm / activation / conv_out are never run. For an SD-family VAE on an h x h latent the
features are 512ch@h, 512@2h, 512@4h, 256@8h, 128@8h.

`FeatureStats` is the per-layer, per-channel statistics record that `lplkit stats` fills and that
the `dataset` normalization and the dataset outlier mask of the LPL read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lplkit.errors import AutoencoderError, ConfigError

__all__ = ["DecoderTaps", "FeatureStats", "LayerInfo"]


@dataclass(frozen=True)
class LayerInfo:
    """One tapped decoder layer.

    Attributes:
        name: the module path inside the decoder, e.g. `mid_block`, `up_blocks.2`.
        channels: channels of the feature map.
        upsample_factor: spatial size of the feature relative to the latent (1 = latent size).
    """

    name: str
    channels: int
    upsample_factor: int


@dataclass
class FeatureStats:
    """Per-channel statistics of one decoder layer's features over a dataset (all `(C,)` tensors).

    Filled by `lplkit stats`; read by the LPL's `dataset` norm, ``f_n = (f - mean) / sqrt(std^2 +
    eps)``, and by its dataset outlier mask, inliers ``q_low - 2 std < f < q_high + 2 std``.

    Attributes:
        mean: per-channel mean.
        std: per-channel standard deviation.
        q_low: per-channel low quantile (the LPL default is the 2% quantile).
        q_high: per-channel high quantile (98%).
    """

    mean: Tensor
    std: Tensor
    q_low: Tensor
    q_high: Tensor

    def check(self, channels: int, where: str) -> None:
        """Raise ConfigError unless every field is a `(channels,)` tensor."""
        for field in ("mean", "std", "q_low", "q_high"):
            value = getattr(self, field)
            if not isinstance(value, Tensor) or tuple(value.shape) != (channels,):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ConfigError(
                    f"feature_stats[{where}].{field} has shape {shape}, expected ({channels},); "
                    "recompute the statistics with `lplkit stats` for this autoencoder and depth"
                )

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> FeatureStats:
        """A copy with every tensor on `device` in `dtype`."""
        return FeatureStats(
            *(
                getattr(self, f).to(device=device, dtype=dtype)
                for f in ("mean", "std", "q_low", "q_high")
            )
        )


def _param_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of a module's first parameter (None for parameter-free modules)."""
    for p in module.parameters():
        return p.dtype
    return None


class _DCEntry(nn.Module):
    """AutoencoderDC's decoder entry: conv_in plus the channel-repeat shortcut, as in its forward."""

    def __init__(self, decoder: Any) -> None:  # diffusers' DC decoder (untyped for the checker)
        super().__init__()
        self.conv_in: nn.Module = decoder.conv_in
        self.repeats: int = decoder.in_shortcut_repeats if decoder.in_shortcut else 0

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        if self.repeats:
            h = h + z.repeat_interleave(self.repeats, dim=1)
        return h


class _KLStage(nn.Module):
    """A mid/up block of the AutoencoderKL decoder, called with `temb=None` (no spatial norm)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x, None)


def _kl_layout(
    vae: Any,  # a diffusers AutoencoderKL (untyped for the checker)
) -> tuple[nn.Module | None, nn.Module, list[nn.Module], list[LayerInfo]]:
    """(post_quant_conv, entry, stages in run order, layer infos) of an AutoencoderKL."""
    dec = vae.decoder
    boc = list(vae.config.block_out_channels)
    stages: list[nn.Module] = [_KLStage(dec.mid_block)]
    infos = [LayerInfo("mid_block", boc[-1], 1)]
    factor = 1
    for i, block in enumerate(dec.up_blocks):
        if getattr(block, "upsamplers", None) is not None:
            factor *= 2
        stages.append(_KLStage(block))
        infos.append(LayerInfo(f"up_blocks.{i}", list(reversed(boc))[i], factor))
    return getattr(vae, "post_quant_conv", None), dec.conv_in, stages, infos


def _dc_layout(vae: Any) -> tuple[None, nn.Module, list[nn.Module], list[LayerInfo]]:
    """(None, entry, stages in run order, layer infos) of an AutoencoderDC; empty stages skipped."""
    from diffusers.models.autoencoders.autoencoder_dc import DCUpBlock2d

    dec = vae.decoder
    boc = list(vae.config.decoder_block_out_channels)
    stages: list[nn.Module] = []
    infos: list[LayerInfo] = []
    factor = 1
    for i in reversed(range(len(dec.up_blocks))):
        stage = dec.up_blocks[i]
        if len(stage) == 0:  # a stage with 0 layers is an identity: it would repeat a feature
            continue
        factor *= 2 ** sum(isinstance(m, DCUpBlock2d) for m in stage)
        stages.append(stage)
        infos.append(LayerInfo(f"up_blocks.{i}", boc[i], factor))
    return None, _DCEntry(dec), stages, infos


def decoder_layout(
    vae: nn.Module,
) -> tuple[nn.Module | None, nn.Module, list[nn.Module], list[LayerInfo]]:
    """Split a supported diffusers autoencoder's decoder into (post_quant_conv, entry, stages, infos).

    Raises:
        AutoencoderError: for any class other than AutoencoderKL / AutoencoderDC (and subclasses).
    """
    from diffusers import AutoencoderDC, AutoencoderKL

    if isinstance(vae, AutoencoderKL):
        return _kl_layout(vae)
    if isinstance(vae, AutoencoderDC):
        return _dc_layout(vae)
    raise AutoencoderError(
        f"decoder features are not supported for {type(vae).__name__}; "
        "use a diffusers AutoencoderKL (SD/SDXL/SD3/FLUX) or AutoencoderDC"
    )


class DecoderTaps(nn.Module):
    """The frozen decoder run up to depth `k`, returning the feature of every tapped stage.

    Args:
        vae: a diffusers AutoencoderKL or AutoencoderDC. The modules the taps run (post_quant_conv
            when applied, the decoder entry and the tapped stages) are frozen in place (`eval()`,
            `requires_grad_(False)`); the rest of the autoencoder (encoder, deeper stages, output
            layers) is left as it was, so a caller may still train it.
        depth: number of stages tapped after the first one (`mid_block` for KL), 0..max_depth.
            `None` taps every stage.
        apply_post_quant_conv: run the AE's post_quant_conv first when it has one (the decoder's
            true input). False reproduces the public reference code, which skips it.
        grad_checkpointing: recompute each stage in backward (torch.utils.checkpoint,
            use_reentrant=False) instead of storing its activations; used only when grad is on.
        channels_last: convert the decoder's weights (in place: the AE is shared) and the input to
            the channels-last memory format; the features then come out channels-last.
    """

    def __init__(
        self,
        vae: nn.Module,
        depth: int | None = None,
        *,
        apply_post_quant_conv: bool = True,
        grad_checkpointing: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        pqc, entry, stages, infos = decoder_layout(vae)
        self.max_depth = len(stages) - 1
        depth = self.max_depth if depth is None else depth
        if not 0 <= depth <= self.max_depth:
            raise ConfigError(
                f"depth={depth} is out of range for {type(vae).__name__}: "
                f"it has {self.max_depth} stages after the first; use 0..{self.max_depth}"
            )
        self.depth = depth
        self.has_post_quant_conv = pqc is not None
        self.post_quant_conv = pqc if (pqc is not None and apply_post_quant_conv) else None
        self.entry = entry
        self.stages = nn.ModuleList(stages[: depth + 1])
        self._layers = infos[: depth + 1]
        #: spatial factor of the full decoder output vs the latent (for outlier-kernel scaling)
        self.decoder_upsample_factor = infos[-1].upsample_factor * _final_upsample(vae)
        self.grad_checkpointing = grad_checkpointing
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        for module in (self.post_quant_conv, self.entry, self.stages):
            if module is not None:
                module.requires_grad_(False)
                module.eval()
        super().train(False)

    @property
    def layers(self) -> list[LayerInfo]:
        """Name, channels and upsample factor of each returned feature, in order."""
        return list(self._layers)

    def train(self, mode: bool = True) -> DecoderTaps:
        """The decoder stays in eval mode whatever the caller's mode (it is frozen)."""
        return super().train(False)

    def _run(self, module: nn.Module, x: Tensor, ckpt: bool) -> Tensor:
        # Cast to the module's own dtype: handles upcast VAEs (e.g. fp32 mid block, bf16 up blocks)
        # and fp32 latents on a bf16 VAE; under autocast the cast is a no-op on compute.
        dtype = _param_dtype(module)
        if dtype is not None and x.dtype != dtype and dtype.is_floating_point:
            x = x.to(dtype)
        if ckpt:
            return checkpoint(module, x, use_reentrant=False)
        return module(x)

    def forward(self, z_BCHW: Tensor) -> list[Tensor]:
        """Features `[stage_0, ..., stage_depth]` of raw (unscaled) latents `z_BCHW`."""
        ckpt = self.grad_checkpointing and torch.is_grad_enabled() and z_BCHW.requires_grad
        h = z_BCHW
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        if self.post_quant_conv is not None:
            h = self._run(self.post_quant_conv, h, False)
        h = self._run(self.entry, h, False)
        features = []
        for stage in self.stages:
            h = self._run(stage, h, ckpt)
            features.append(h)
        return features


def _final_upsample(vae: nn.Module) -> int:
    """Upsampling done after the last stage (AutoencoderDC may upsample in conv_out)."""
    conv_out = getattr(vae.decoder, "conv_out", None)
    if conv_out is not None and type(conv_out).__name__ == "DCUpBlock2d":
        return 2
    return 1
