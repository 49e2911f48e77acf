"""Denoisers on latent grids of any shape and size (aspect-ratio buckets, `lplkit encode --buckets`).

What each diffusers model needs to run on a latent of ``h x w`` (patch ``p``) other than the
``sample_size x sample_size`` it was built for (diffusers 0.42):

| model                      | positional embedding                                   | output        |
| -------------------------- | ------------------------------------------------------ | ------------- |
| ``UNet2DModel``            | none (convolutions)                                    | any h, w divisible by 2^(levels-1) |
| ``DiTTransformer2DModel``  | ``PatchEmbed`` recomputes the 2-D sincos table for the | unpatchify assumes a square grid: |
|                            | ``(h/p, w/p)`` grid when it differs from the built one | fixed here (below) |
| ``PixArtTransformer2DModel`` | same ``PatchEmbed`` as DiT                           | uses the input's h, w |
| ``SD3Transformer2DModel``  | ``pos_embed_max_size``: a ``max x max`` table, the     | uses the input's h, w |
|                            | centre ``(h/p, w/p)`` window cropped; needs both <= max |              |

DiT / PixArt positions (``get_2d_sincos_pos_embed``): patch row ``i`` of a ``g_h x g_w`` grid sits at
``i * base / g_h`` with ``base = sample_size / p`` (columns likewise), i.e. every grid spans the same
``[0, base)`` range on both axes, the interpolated positions PixArt-alpha trains its multi-aspect
buckets with. So lplkit builds a DiT once, with ``sample_size`` = the side of the square of the
largest bucket area (:func:`base_sample_size`; a square store: its own side, as before), and the
same weights run at every bucket's grid. SD3's crop instead keeps absolute positions and needs
``pos_embed_max_size >= max(h, w) / p``.

diffusers' DiT unpatchifies with ``height = width = sqrt(tokens)``: a non-square grid either fails
to reshape (``8 x 16`` latents) or, when the token count is a square (``4 x 16``: 2 x 8 = 16 tokens),
silently returns an ``8 x 8`` output. :func:`any_grid` fixes it without touching the class (so
``save_pretrained`` / ``DiTPipeline`` see a stock ``DiTTransformer2DModel``): forward hooks pad the
``g_h x g_w`` output tokens into the top-left of a ``s x s`` grid (``s = max(g_h, g_w)``), which the
square unpatchify then places at their true pixels, and crop the output back to ``h x w``. A square
input is left untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from lplkit.errors import ConfigError

__all__ = ["any_grid", "base_sample_size", "check_grid", "grid_multiple"]


def base_sample_size(shapes: Iterable[tuple[int, int]], multiple: int = 1) -> int:
    """The square latent side a transformer is built with for latents of ``shapes`` ``(h, w)``:
    ``floor(sqrt(max h*w))`` rounded down to ``multiple`` (at least ``multiple``); ``h`` for a
    single square shape."""
    areas = [int(h) * int(w) for h, w in shapes]
    if not areas:
        raise ConfigError("no latent shapes to size the model for")
    side = math.isqrt(max(areas))
    return max(multiple, side - side % multiple)


def check_grid(name: str, h: int, w: int, multiple: int) -> None:
    """Refuse (one line) latents whose sides are not multiples of the model's patch/downsampling."""
    if h % multiple or w % multiple:
        raise ConfigError(
            f"{name} needs latent sides divisible by {multiple}, got {h}x{w} (h x w): encode with "
            "buckets that are multiples of the autoencoder's downsampling times this"
        )


def _patch(net: nn.Module) -> int:
    config: Any = net.config
    return int(config.patch_size)


def _remember_grid(net: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    x = args[0] if args else kwargs["hidden_states"]
    p = _patch(net)
    net.proj_out_2._lplkit_grid = (x.shape[-2] // p, x.shape[-1] // p)  # type: ignore[union-attr]


def _pad_tokens(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor | None:
    gh, gw = mod._lplkit_grid  # type: ignore[misc]
    if gh == gw:
        return None
    s = max(gh, gw)
    grid = out.reshape(out.shape[0], gh, gw, out.shape[-1])
    return F.pad(grid, (0, 0, 0, s - gw, 0, s - gh)).reshape(out.shape[0], s * s, out.shape[-1])


def _crop_output(net: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
    proj: Any = net.proj_out_2
    gh, gw = proj._lplkit_grid
    if gh == gw:
        return None
    p = _patch(net)
    if isinstance(out, tuple):
        return (out[0][..., : gh * p, : gw * p], *out[1:])
    out.sample = out.sample[..., : gh * p, : gw * p]
    return out


def any_grid(net: nn.Module) -> nn.Module:
    """Make a diffusers ``DiTTransformer2DModel`` return the input's ``h x w`` for any grid
    (see the module doc); other models are returned as they are. Idempotent."""
    if type(net).__name__ != "DiTTransformer2DModel" or getattr(net, "_lplkit_any_grid", False):
        return net
    net.register_forward_pre_hook(_remember_grid, with_kwargs=True)
    net.proj_out_2.register_forward_hook(_pad_tokens)  # type: ignore[union-attr]
    net.register_forward_hook(_crop_output, with_kwargs=True)
    net._lplkit_any_grid = True  # type: ignore[assignment]
    return net


def grid_multiple(net: nn.Module) -> int:
    """What a latent side must be a multiple of for ``net``: a transformer's patch size, a
    ``UNet2DModel``'s total downsampling ``2^(levels - 1)``, else 1."""
    config: Any = getattr(net, "config", {})
    if config.get("patch_size"):
        return int(config["patch_size"])
    if "block_out_channels" in config:
        return 2 ** (len(config["block_out_channels"]) - 1)
    return 1
