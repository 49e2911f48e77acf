"""Text conditioning tensors: combining several cached encoders, caption dropout, batching.

A *text condition* is a dict of tensors for a batch of B captions:

  states  (B, L, D)  per-token states the denoiser attends to
  mask    (B, L)     1 for real tokens (PixArt / U-Net cross-attention mask; MMDiT ignores it)
  pooled  (B, P)     optional pooled vector (MMDiT adds it to the timestep embedding)

Several encoders combine the way ``StableDiffusion3Pipeline.encode_prompt`` does it: the CLIP
encoders' states are concatenated along features (in the order given), zero-padded to the width
of the T5 states, then concatenated with the T5 states along tokens; the pooled vectors (CLIP
only) are concatenated along features:

  states = [pad_D(cat_D(clip_1, ..., clip_k)) ; t5]      pooled = cat(pooled_1, ..., pooled_k)

Caption dropout (classifier-free guidance) replaces a row's states, mask and pooled vector by
those of the empty caption ``""``, encoded once with the same encoder(s):

  cond[i] = empty  if drop[i]  else cond[i]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lplkit.errors import ConfigError

__all__ = ["TextCond", "combine", "concat", "drop_captions", "expand", "text_dims", "to_device"]

TextCond = dict[str, Tensor]


def combine(parts: Sequence[tuple[str, Mapping[str, Tensor]]]) -> TextCond:
    """One condition from ``[(family, {states, mask[, pooled]}), ...]`` (SD3's rule, module doc).

    One encoder is returned unchanged (states as float32)."""
    if not parts:
        raise ConfigError("a text model needs at least one text encoder")
    clip = [p for fam, p in parts if fam == "clip"]
    other = [p for fam, p in parts if fam != "clip"]
    if len(parts) == 1:
        ((_, only),) = parts
        return {k: v for k, v in only.items()}
    blocks: list[Tensor] = []
    masks: list[Tensor] = []
    if clip:
        lengths = {int(p["states"].shape[1]) for p in clip}
        if len(lengths) > 1:
            raise ConfigError(
                f"CLIP encoders are concatenated along features and need one token count; got "
                f"{sorted(lengths)} (encode them with the same --text-max-tokens)"
            )
        states = torch.cat([p["states"].float() for p in clip], dim=-1)
        mask = clip[0]["mask"]
        for p in clip[1:]:
            mask = torch.maximum(mask, p["mask"])
        blocks.append(states)
        masks.append(mask)
    for p in other:
        blocks.append(p["states"].float())
        masks.append(p["mask"])
    width = max(int(b.shape[-1]) for b in blocks)
    blocks = [torch.nn.functional.pad(b, (0, width - int(b.shape[-1]))) for b in blocks]
    out: TextCond = {"states": torch.cat(blocks, dim=1), "mask": torch.cat(masks, dim=1)}
    pooled = [p["pooled"].float() for p in clip if "pooled" in p]
    if pooled:
        out["pooled"] = torch.cat(pooled, dim=-1)
    return out


def text_dims(cond: Mapping[str, Tensor]) -> dict[str, int | None]:
    """``{"tokens": L, "states_dim": D, "pooled_dim": P or None}`` of a condition (any batch)."""
    states = cond["states"]
    pooled = cond.get("pooled")
    return {
        "tokens": int(states.shape[-2]),
        "states_dim": int(states.shape[-1]),
        "pooled_dim": None if pooled is None else int(pooled.shape[-1]),
    }


def drop_captions(
    cond: Mapping[str, Tensor], empty: Mapping[str, Tensor], drop: Tensor
) -> TextCond:
    """Rows ``drop`` (bool (B,)) of ``cond`` replaced by ``empty`` (batch 1): states, mask, pooled."""
    out: TextCond = {}
    for key, value in cond.items():
        fill = empty[key].to(value.device, value.dtype).expand_as(value)
        where = drop.to(value.device).view(-1, *([1] * (value.ndim - 1)))
        out[key] = torch.where(where, fill, value)
    return out


def expand(cond: Mapping[str, Tensor], batch: int) -> TextCond:
    """A batch-1 condition (e.g. the empty caption) repeated to ``batch`` rows."""
    return {k: v.expand(batch, *v.shape[1:]).contiguous() for k, v in cond.items()}


def concat(conds: Sequence[Mapping[str, Tensor]]) -> TextCond:
    """Row-wise concatenation of conditions with the same keys."""
    return {k: torch.cat([c[k] for c in conds]) for k in conds[0]}


def to_device(cond: Mapping[str, Tensor], device: torch.device | str) -> TextCond:
    """The condition on ``device``; states and pooled as float32, the mask as is."""
    return {
        k: v.to(device, torch.float32 if k != "mask" else v.dtype, non_blocking=True)
        for k, v in cond.items()
    }
