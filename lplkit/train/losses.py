"""One micro-batch of the training loss: the diffusion objective plus the gated LPL term.

    L = mean_b L_diff(b) + w * (1/B) * sum_{b in G} LPL(z0_hat_b, z0_b)

G is the set of gated samples (SNR(t_b) >= snr_min and/or t_b < max_timestep); samples outside G
contribute 0 and the decoder never sees them (they are gathered out before the LPL call, and a
micro-batch with no gated sample skips the decoder entirely). Dividing by the full batch size B
(not |G|) keeps the LPL's share of the gradient proportional to how many samples pass the gate,
and makes the reduction identical however the batch is split over ranks and accumulation steps.
z0_hat and z0 are mapped back to the autoencoder's raw latent space before the LPL.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lplkit.diffusion.objectives import Objective
from lplkit.train.normalization import LatentNormalizer

# pred_raw (n, C, h, w), target_raw (n, C, h, w) -> (n,) per-sample LPL; with `lpl.loss.crop` it
# is also given the keyword `crop_u` (n, 2) (`LatentPerceptualLoss.forward_gathered`)
LplFn = Callable[..., Tensor]


@dataclass
class LossParts:
    """The micro-batch loss to backpropagate and its detached per-sample parts (for logging)."""

    total: Tensor  # scalar
    diffusion: Tensor  # (B,) detached
    lpl: Tensor  # (B,) detached, 0 outside the gate
    gated: Tensor  # (B,) bool


def denoise(
    model: nn.Module,
    z_t: Tensor,
    model_t: Tensor,
    labels: Tensor | None,
    text: dict[str, Tensor] | None = None,
) -> Tensor:
    """Call a `lplkit.diffusion.denoisers.Denoiser` (z_t, timestep, labels[, text]); keep the first C
    channels of a learned-sigma (2C) output."""
    out = model(z_t, model_t, labels) if text is None else model(z_t, model_t, labels, text)
    out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, tuple) else out)
    if out.shape[1] == 2 * z_t.shape[1]:
        out = out[:, : z_t.shape[1]]
    return out


def micro_batch_loss(
    model: nn.Module,
    objective: Objective,
    z0: Tensor,
    labels: Tensor | None,
    eps: Tensor,
    t: Tensor,
    *,
    normalizer: LatentNormalizer,
    lpl: LplFn | None = None,
    lpl_weight: float = 1.0,
    gate: Tensor | None = None,
    lpl_sample_weight: Tensor | None = None,
    lpl_crop_u: Tensor | None = None,
    text: dict[str, Tensor] | None = None,
    bf16: bool = False,
    fp16: bool = False,
) -> LossParts:
    """Loss of one micro-batch of normalized latents `z0` (B, C, h, w).

    Args:
        gate: bool (B,) samples that get the LPL; None or `lpl=None` disables the term.
        lpl_sample_weight: (B,) per-sample LPL weight (e.g. `Objective.min_snr_weight`); None = 1.
        lpl_crop_u: (B, 2) uniform draws placing each sample's LPL crop window (`lpl.loss.crop`);
            the gated rows' are passed to `lpl` as `crop_u`. None = `lpl` gets no crop draws.
        text: a text model's condition for these rows (`lplkit.diffusion.text_conditioning`).
        bf16, fp16: autocast the denoiser and LPL forward to that dtype (losses stay float32; fp16
            needs the caller's gradient scaler).
    """
    B = z0.shape[0]
    sample = objective.compute(z0, eps, t)
    amp = torch.bfloat16 if bf16 else torch.float16 if fp16 else None
    ctx = torch.autocast(z0.device.type, dtype=amp) if amp is not None else nullcontext()
    with ctx:
        out = denoise(model, sample.z_t, sample.model_t, labels, text)
    out = out.float()
    diff = objective.loss(out, sample.target)
    total = diff.mean()
    lpl_B = torch.zeros(B, device=z0.device)
    gated = torch.zeros(B, dtype=torch.bool, device=z0.device) if gate is None else gate
    if lpl is not None and gate is not None:
        idx = gate.nonzero().squeeze(1)
        if idx.numel() > 0:  # host sync, but it is what lets an empty gate skip the decoder
            z0_hat = objective.predict_z0(sample.z_t[idx], t[idx], out[idx])
            pred_raw = normalizer.unnormalize(z0_hat)
            target_raw = normalizer.unnormalize(z0[idx])
            with ctx:
                if lpl_crop_u is None:
                    per = lpl(pred_raw, target_raw).float()
                else:
                    crop_u = lpl_crop_u.index_select(0, idx.to(lpl_crop_u.device))
                    per = lpl(pred_raw, target_raw, crop_u=crop_u).float()
            if lpl_sample_weight is not None:
                per = per * lpl_sample_weight[idx].float()
            lpl_B = lpl_B.index_put((idx,), per.detach())
            total = total + lpl_weight * per.sum() / float(B)
    return LossParts(total=total, diffusion=diff.detach(), lpl=lpl_B, gated=gated)
