"""Latent Perceptual Loss (Berrada et al., "Boosting Latent Diffusion with Perceptual Objectives",
ICLR 2025, arXiv 2411.04873).

For a target clean latent z0 and the model's estimate z0_hat, both *raw* (the autoencoder's own
latent space, scaling/shift undone), with phi_l the frozen decoder's feature at tapped layer l
(`DecoderTaps`), N the normalization and m_l the target-feature inlier mask:

    d_l(b)   = 1/C_l sum_c [ sum_hw m_l * D(N(phi_l(z0_hat)), N(phi_l(z0))) / sum_hw m_l ]
    LPL(b)   = 1/L sum_l w_l d_l(b)                 (L = number of tapped layers = depth + 1)

and the training objective is L = L_diff + w_lpl * mean_b(LPL(b) over gated samples). Target
features are computed under no_grad; only z0_hat receives gradients; decoder parameters never do.

    lpl = LatentPerceptualLoss(vae, preset="paper")          # options override the preset
    per_sample = lpl(pred_z0, target_z0)                      # (B,)
    per_sample = lpl(pred_z0, target_z0, select=idx)          # decoder runs on rows idx only
    per_sample = lpl.from_normalized(pred_n, target_n, scale, shift, select=idx)

With ``crop=c`` the decoder sees one c x c window per sample (`lplkit.lpl.crops`), placed by the
uniform draws ``crop_u`` (n, 2) the caller passes (else drawn from `generator` / torch's global RNG).
With ``compile=True`` the decoder taps and the fp32 loss math run as one `torch.compile` graph whose
batch dimension is dynamic: a gated batch of 13 rows reuses the graph compiled for 12.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lplkit.errors import ConfigError
from lplkit.lpl.config import LPLConfig, resolve_lpl_config
from lplkit.lpl.crops import crop_offsets, crop_windows
from lplkit.lpl.decoder_taps import DecoderTaps, FeatureStats, LayerInfo
from lplkit.lpl.terms import (
    inlier_mask,
    layer_distance,
    layer_weights,
    morphology_sizes,
    normalize_pair,
)

__all__ = ["FeatureStats", "LatentPerceptualLoss"]

_STAT_FIELDS = ("mean", "std", "q_low", "q_high")

# inductor options of the compiled LPL on the CPU (why: `LatentPerceptualLoss._compiled_for`)
CPU_INDUCTOR_OPTIONS: Mapping[str, Any] = {
    "layout_optimization": False,
    "reorder_for_peak_memory": False,
}


def _outlier_layers(cfg: LPLConfig, taps: DecoderTaps) -> dict[int, tuple[int, int]]:
    """{layer index: (dilation, erosion) sizes} of the layers that get the outlier mask.

    True = the reference code's choice: layer 2 with down_f 2, layers >= 3 with down_f 1.
    A list of indices scales down_f by resolution: decoder output factor / layer factor.
    """
    n = len(taps.layers)
    o = cfg.outliers
    if o is False:
        return {}
    if o is True:
        down = {i: (2 if i == 2 else 1) for i in range(2, n)}
    elif isinstance(o, Mapping):
        down = dict(o)
    else:
        full = taps.decoder_upsample_factor
        down = {i: max(1, full // taps.layers[i].upsample_factor) for i in o if i < n}
        down.update({i: 1 for i in o if i >= n})  # reported below as out of range
    bad = sorted(i for i in down if i >= n)
    if bad:
        raise ConfigError(f"outlier layers {bad} do not exist: only layers 0..{n - 1} are tapped")
    return {i: morphology_sizes(d) for i, d in sorted(down.items())}


def _lookup_stats(
    feature_stats: Mapping[int | str, FeatureStats], i: int, info: LayerInfo
) -> FeatureStats:
    for key in (i, info.name):
        if key in feature_stats:
            feature_stats[key].check(info.channels, str(key))
            return feature_stats[key]
    raise ConfigError(
        f"feature_stats has no entry for layer {i} ({info.name}); "
        "run `lplkit stats` with at least this depth"
    )


def _connected_zeros(pred_z0: Tensor) -> Tensor:
    """Zeros (B,) in the loss dtype (>= fp32) that are part of `pred_z0`'s autograd graph (a sum
    over an empty slice: exactly 0 with zero gradient, even where pred_z0 is inf or NaN)."""
    dt = torch.promote_types(pred_z0.dtype, torch.float32)
    return pred_z0.flatten(1)[:, :0].to(dt).sum(dim=1)


def _channel_view(v: float | Tensor, like: Tensor) -> float | Tensor:
    """A scalar stays scalar; a (C,) tensor becomes (1, C, 1, 1) on `like`'s device, >= fp32."""
    if not isinstance(v, Tensor):
        return v
    v = v.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))
    return v.view(1, -1, 1, 1) if v.dim() == 1 else v


class LatentPerceptualLoss(nn.Module):
    """Per-sample LPL between predicted and target raw latents.

    Args:
        vae: a diffusers AutoencoderKL or AutoencoderDC; frozen in place (eval, no grad).
        preset: `paper` (default) or `diffusers-reference`; see `lplkit.lpl.config`.
        feature_stats: cached per-layer statistics (`lplkit stats`), keyed by layer index or layer
            name; required by ``norm="dataset"`` and ``outlier_source="dataset"``.
        **overrides: any `LPLConfig` field (depth, norm, standardize_stats, outliers, layer_weights,
            distance, apply_post_quant_conv, grad_checkpointing, eps, crop, crop_mode, compile,
            channels_last).

    Raises:
        ConfigError: an unknown preset/option, a bad value, or missing/mis-shaped feature_stats.
        AutoencoderError: an unsupported autoencoder class.
    """

    layer_weight: Tensor  # buffer (register_buffer), per-layer weights

    def __init__(
        self,
        vae: nn.Module,
        preset: str = "paper",
        *,
        feature_stats: Mapping[int | str, FeatureStats] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self.config = resolve_lpl_config(preset, **overrides)
        cfg = self.config
        self.preset = preset
        self.taps = DecoderTaps(
            vae,
            cfg.depth,
            apply_post_quant_conv=cfg.apply_post_quant_conv,
            grad_checkpointing=cfg.grad_checkpointing,
            channels_last=cfg.channels_last,
        )
        self.layers: list[LayerInfo] = self.taps.layers
        self.outlier_sizes = _outlier_layers(cfg, self.taps)
        # buffers start on the autoencoder's device (callers rarely .to() a loss module)
        device = next(iter(self.taps.parameters())).device
        weights = torch.tensor(layer_weights(cfg.layer_weights, self.layers), device=device)
        self.register_buffer("layer_weight", weights, persistent=False)
        needs_stats = cfg.norm == "dataset" or (
            cfg.outlier_source == "dataset" and bool(self.outlier_sizes)
        )
        self._has_stats = needs_stats
        if needs_stats:
            if feature_stats is None:
                raise ConfigError(
                    "the `dataset` norm / outlier source needs feature_stats: "
                    "run `lplkit stats` on the store and pass its decoder-feature statistics"
                )
            for i, info in enumerate(self.layers):
                st = _lookup_stats(feature_stats, i, info)
                for f in _STAT_FIELDS:
                    t = getattr(st, f).detach().to(device=device, dtype=torch.float32)
                    self.register_buffer(f"stats_{f}_{i}", t, persistent=False)

        # Dynamo traces the taps and the loss math into one graph (the backward is compiled too),
        # built on the first call per device type (`_compiled_for`); the batch dimension is marked
        # dynamic at each call (`layer_terms`).
        self._compiled: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}
        self._verified: set[tuple[str, bool]] = set()  # graphs checked against eager
        super().train(False)

    def train(self, mode: bool = True) -> LatentPerceptualLoss:
        """Always eval: the loss holds only the frozen decoder (no dropout/norm state to train)."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"preset={self.preset!r}, config={self.config}"

    def _stats(self, i: int, device: torch.device, dtype: torch.dtype) -> FeatureStats | None:
        if not self._has_stats:
            return None
        return FeatureStats(
            *(getattr(self, f"stats_{f}_{i}").to(device, dtype) for f in _STAT_FIELDS)
        )

    def _inlier_mask(self, i: int, y: Tensor) -> Tensor | None:
        """Bool inlier mask of layer i's target features (None when the layer has none)."""
        if i not in self.outlier_sizes:
            return None
        cfg = self.config
        dilate, erode = self.outlier_sizes[i]
        dt = torch.promote_types(y.dtype, torch.float32)
        stats = self._stats(i, y.device, dt) if cfg.outlier_source == "dataset" else None
        mask = inlier_mask(
            y.to(dt),
            quantile=cfg.outlier_quantile,
            std_mult=cfg.outlier_std_mult,
            dilate=dilate,
            erode=erode,
            stats=stats,
        )
        return mask.bool()

    def _layer_term(self, i: int, x: Tensor, y: Tensor, inliers: Tensor | None) -> Tensor:
        """d_l of one layer, (n,): fp32 cast, mask, normalization, masked distance."""
        cfg = self.config
        dt = torch.promote_types(x.dtype, torch.float32)
        x, y = x.to(dt), y.to(dt)
        mask = None if inliers is None else inliers.to(dt)
        xn, yn = normalize_pair(
            x,
            y,
            mask,
            cfg.norm,
            eps=cfg.eps,
            standardize_stats=cfg.standardize_stats,
            stats=self._stats(i, x.device, dt),
        )
        return layer_distance(xn, yn, mask, cfg.distance)

    def layer_terms(self, pred_z0: Tensor, target_z0: Tensor) -> Tensor:
        """Unweighted per-layer distances d_l, shape (n, L), on already-selected rows."""
        if not self.config.compile:
            return self._layer_terms(pred_z0, target_z0)
        compiled = self._compiled_for(pred_z0.device.type)
        # one graph for every n >= 2 (torch specializes n = 1: at most one more graph)
        torch._dynamo.maybe_mark_dynamic(pred_z0, 0)
        torch._dynamo.maybe_mark_dynamic(target_z0, 0)
        graph = (pred_z0.device.type, pred_z0.shape[0] == 1)
        if graph not in self._verified and torch.is_grad_enabled() and pred_z0.requires_grad:
            self._verify_compiled(compiled, pred_z0, target_z0)
            self._verified.add(graph)
        return compiled(pred_z0, target_z0)

    def _compiled_for(self, device_type: str) -> Callable[[Tensor, Tensor], Tensor]:
        """The compiled `_layer_terms` for one device type, built on first use.

        On the CPU two inductor passes are off (`CPU_INDUCTOR_OPTIONS`): with either on, torch
        2.13's C++ backend schedules a read of the nearest-upsampling's gradient buffer before the
        scatter-add that fills it, so the input gradient through a frozen GroupNorm -> conv ->
        conv residual -> 2x upsample -> conv (the up block of every SD-style decoder) comes out
        zero (docs/results/inductor-cpu-zero-grad/). Other devices keep inductor's defaults;
        `_verify_compiled` guards every device.
        """
        if device_type not in self._compiled:
            options = dict(CPU_INDUCTOR_OPTIONS) if device_type == "cpu" else None
            self._compiled[device_type] = torch.compile(self._layer_terms, options=options)
        return self._compiled[device_type]

    def skip_compile_check(self, device: str | torch.device) -> None:
        """Mark this device's compiled graphs as checked: `_verify_compiled` will not run (nor
        refuse) them. For benchmarks that time a graph the check would refuse; never for training.
        """
        device_type = torch.device(device).type
        self._verified.update({(device_type, True), (device_type, False)})  # (type, n == 1)

    def _verify_compiled(
        self, compiled: Callable[[Tensor, Tensor], Tensor], pred_z0: Tensor, target_z0: Tensor
    ) -> None:
        """Once per compiled graph, on its first training batch: the compiled terms and their
        gradient against eager's. Raises ConfigError instead of training on a wrong gradient
        (torch 2.13's CPU inductor backend computes a wrong one with its default options).

        Tolerances allow bf16 rounding: values within 5% of eager's largest term, gradient within
        10% of eager's (||g - g_eager|| / ||g_eager||).
        """
        p = pred_z0.detach().requires_grad_()
        torch._dynamo.maybe_mark_dynamic(p, 0)
        got = []
        for fn in (self._layer_terms, compiled):
            terms = fn(p, target_z0)
            (grad,) = torch.autograd.grad(terms.sum(), p)
            got.append((terms.detach().double(), grad.detach().double().flatten()))
        (v0, g0), (v1, g1) = got
        value_err = float((v1 - v0).abs().max() / v0.abs().max().clamp_min(1e-30))
        grad_err = float((g1 - g0).norm() / g0.norm().clamp_min(1e-30))
        if not (value_err <= 0.05 and grad_err <= 0.1):
            raise ConfigError(
                f"the compiled LPL differs from eager on this batch (value error {value_err:.1e}, "
                f"gradient error {grad_err:.1e}) with torch {torch.__version__} on "
                f"{pred_z0.device.type}: train without compile (--no-lpl-compile)"
            )

    def _layer_terms(self, pred_z0: Tensor, target_z0: Tensor) -> Tensor:
        with torch.no_grad():
            target_feats = self.taps(target_z0.detach())
        pred_feats = self.taps(pred_z0)
        # With checkpointing the fp32 loss math is recomputed in backward too: its full-size
        # intermediates (casts, centred/normalized maps, differences) are never stored.
        ckpt = self.config.grad_checkpointing and torch.is_grad_enabled() and pred_z0.requires_grad
        cols = []
        # Norms, quantiles and masks in fp32 (fp64 stays fp64), never under autocast.
        with torch.autocast(device_type=pred_z0.device.type, enabled=False):
            for i, (x, y) in enumerate(zip(pred_feats, target_feats, strict=True)):
                inliers = self._inlier_mask(i, y)
                if ckpt:
                    col = checkpoint(self._layer_term, i, x, y, inliers, use_reentrant=False)
                else:
                    col = self._layer_term(i, x, y, inliers)
                cols.append(col)
        return torch.stack(cols, dim=1)

    def _crop(
        self,
        pred_z0: Tensor,
        target_z0: Tensor,
        crop_u: Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor]:
        """The same `crop` x `crop` window of prediction and target, per sample."""
        n, crop = pred_z0.shape[0], self.config.crop
        assert crop is not None
        if crop_u is None:
            dev = generator.device if generator is not None else torch.device("cpu")
            crop_u = torch.rand(n, 2, generator=generator, device=dev)
        if tuple(crop_u.shape) != (n, 2):
            raise ValueError(f"crop_u has shape {tuple(crop_u.shape)}, expected ({n}, 2)")
        size = (pred_z0.shape[2], pred_z0.shape[3])
        offsets = crop_offsets(crop_u, size, crop, self.config.crop_mode).to(pred_z0.device)
        return crop_windows(pred_z0, offsets, crop), crop_windows(target_z0, offsets, crop)

    def forward_gathered(
        self,
        pred_z0: Tensor,
        target_z0: Tensor,
        *,
        crop_u: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """LPL of every row of already-gathered raw latents, shape (n,); n = 0 costs nothing.

        `crop_u` (n, 2) in [0, 1): where each row's crop window goes (only with the `crop`
        option); None draws it from `generator` (torch's global RNG when None too).
        """
        if pred_z0.shape != target_z0.shape:
            raise ValueError(
                f"pred {tuple(pred_z0.shape)} and target {tuple(target_z0.shape)} differ"
            )
        if pred_z0.shape[0] == 0:
            return _connected_zeros(pred_z0)
        if self.config.crop is not None:
            pred_z0, target_z0 = self._crop(pred_z0, target_z0, crop_u, generator)
        terms = self.layer_terms(pred_z0, target_z0)
        # a plain weighted sum (a matmul would be cast to bf16 under autocast)
        w = self.layer_weight.to(terms.device, terms.dtype)
        return (terms * w).sum(dim=1) / len(self.layers)

    def forward(
        self,
        pred_z0: Tensor,
        target_z0: Tensor,
        select: Tensor | None = None,
        *,
        crop_u: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample LPL of raw latents (B, C, h, w) -> (B,).

        `select` limits the decoder to some rows; the other rows get 0 (and zero gradient):
        - an int64 index tensor (n,): no host sync, n = 0 does no decoder work. A row listed k
          times counts once, in value and in gradient (each copy contributes 1/k), but is decoded
          k times: pass unique indices;
        - a bool mask (B,): needs `nonzero()`, which syncs host and device on GPU. To avoid the
          sync, pass indices or call `forward_gathered` on pre-gathered rows.
        The result is connected to `pred_z0`'s graph even when no row is selected (zeros whose
        `.backward()` gives a zero gradient).
        `crop_u` (B, 2): the crop draws of every row (the selected rows' are used).
        """
        crop: dict[str, Any] = {"crop_u": crop_u, "generator": generator}
        if select is None:
            return self.forward_gathered(pred_z0, target_z0, **crop)
        b = pred_z0.shape[0]
        if select.dtype == torch.bool:
            if select.shape != (b,):
                raise ValueError(f"bool select has shape {tuple(select.shape)}, expected ({b},)")
            idx = select.nonzero().squeeze(1)
        else:
            idx = select.reshape(-1).to(torch.long)
        out = _connected_zeros(pred_z0)
        if idx.numel() == 0:
            return out
        if crop_u is not None:
            crop["crop_u"] = crop_u.index_select(0, idx.to(crop_u.device))
        vals = self.forward_gathered(
            pred_z0.index_select(0, idx), target_z0.index_select(0, idx), **crop
        )
        # Duplicates without a host sync: each copy of a row listed k times adds vals / k, so
        # the row counts once in the value and its gradient is not multiplied by k.
        copies = torch.zeros(b, dtype=vals.dtype, device=vals.device).index_add_(
            0, idx, torch.ones_like(vals)
        )
        return out.index_add(0, idx, vals / copies.index_select(0, idx))

    def from_normalized(
        self,
        pred_n: Tensor,
        target_n: Tensor,
        scale: float | Tensor,
        shift: float | Tensor = 0.0,
        select: Tensor | None = None,
        *,
        crop_u: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """LPL of latents in the diffusion model's normalized space.

        The model sees ``z_n = (z_raw - shift) * scale``, so the raw latents are

            z_raw = z_n / scale + shift

        `scale`/`shift` are scalars (e.g. SD: scale = vae.config.scaling_factor, shift = 0; SD3/
        FLUX: scale = scaling_factor, shift = shift_factor) or per-channel (C,) tensors; for
        per-channel statistics (z_n = (z_raw - mean) / std) pass scale = 1 / std, shift = mean.
        """
        s, t = _channel_view(scale, pred_n), _channel_view(shift, pred_n)
        return self.forward(
            pred_n / s + t, target_n / s + t, select=select, crop_u=crop_u, generator=generator
        )
