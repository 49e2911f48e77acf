"""Denoiser registry over diffusers model classes (DiT sizes by name).

A registry entry is one small function ``(in_channels, sample_size, num_classes) -> Denoiser``
decorated with ``@register_model(name)``. ``build_model(name, ...)`` looks it up.

DiT sizes (Peebles & Xie 2023, Table 1) as ``DiTTransformer2DModel``:

| size | depth | hidden | heads |       | size | depth | hidden | heads |
| S    | 12    | 384    | 6     |       | L    | 24    | 1024   | 16    |
| B    | 12    | 768    | 12    |       | XL   | 28    | 1152   | 16    |

each with patch 2, 4 or 8 (``DiT-XL/2`` ...), plus ``DiT-T/2`` (depth 2, hidden 64, 2 heads) for tests.
``out_channels = in_channels`` (no learned sigma: lplkit's objectives regress eps, v or velocity only).

A diffusers checkpoint of any size (``lplkit train --init org/DiT-pipeline``, `lplkit.train.pipeline_init`)
is wrapped with :func:`wrap_diffusers`; its ``spec`` then holds the checkpoint's own model config
(``spec["diffusers"]``), from which :func:`build_from_spec` rebuilds it. A learned-sigma checkpoint
(``out_channels = 2 x in_channels``, DiT's eps + variance interpolation) keeps its variance half in
the network, but ``Denoiser.forward`` returns the eps half only: lplkit's DDIM sampler and
``DiTPipeline`` both step with eps alone (docs/post-training.md).

Conditioning: diffusers' DiT embeds ``class_labels`` with a table of ``num_embeds_ada_norm + 1`` rows;
the extra row is the null class used for classifier-free guidance, id ``num_classes``. It requires
labels, so an unconditional model is built with one class and is always fed the null id. The
table's own random label dropout (global RNG, train mode only) is switched off: the trainer draws
the label-drop mask of each global batch from its seeded per-step generator (`lplkit.train.loop`), so
runs stay reproducible.

Latent shapes: a model is built for ``sample_size`` (a square side) and runs on any ``h x w`` grid
its patch / downsampling divides (aspect-ratio buckets): which diffusers model needs what, and
lplkit's fix of DiT's square-only unpatchify, are in `lplkit.diffusion.patch_grid`.

Text-to-image models (``text`` given at build: ``{"tokens", "states_dim", "pooled_dim"}`` of the
cached encoder(s), `lplkit.diffusion.text_conditioning`) take ``text={"states", "mask"[, "pooled"]}``
instead of labels:

| name | diffusers class | conditioning |
| ``PixArt-{T,S,B,L}/2`` | ``PixArtTransformer2DModel`` | cross-attention to the states (mask applied), ``caption_channels = D`` |
| ``MMDiT-{T,S,B,L}/2`` | ``SD3Transformer2DModel`` | joint attention over image and text tokens (no mask, as SD3), pooled vector into the timestep embedding (needs a CLIP encoder) |
| ``UNetText-{T,S}`` | ``UNet2DConditionModel`` | cross-attention (mask applied) in the attention levels, as SD 1.x |

The transformer sizes are the DiT table's (depth, hidden, heads), patch 2. PixArt uses no
resolution/aspect micro-conditions (``use_additional_conditions=False``); MMDiT's position table
is ``pos_embed_max_size`` = the latent grid (``sample_size / 2``), so it crops nothing.

Note on size: diffusers' DiT keeps one timestep+label embedder per block (the paper shares one), so
``DiT-XL/2`` has 749.8M parameters here, 674.8M when those per-block copies are counted once (the
paper's 675M). Weights converted from the official checkpoints load into this layout unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lplkit.diffusion.patch_grid import any_grid
from lplkit.errors import ConfigError

__all__ = [
    "DIT_SIZES",
    "TEXT_FAMILIES",
    "Denoiser",
    "build_from_spec",
    "build_model",
    "is_text_model",
    "list_models",
    "register_model",
    "wrap_diffusers",
]

ModelFactory = Callable[..., "Denoiser"]
_REGISTRY: dict[str, ModelFactory] = {}
_TEXT_MODELS: set[str] = set()  # names whose factory takes `text` (dims of the conditioning)
#: diffusers class -> conditioning family of a text model
TEXT_FAMILIES = {
    "PixArtTransformer2DModel": "pixart",
    "SD3Transformer2DModel": "mmdit",
    "UNet2DConditionModel": "unet-text",
}

# name -> (depth, hidden size, attention heads)
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    "T": (2, 64, 2),
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


class Denoiser(nn.Module):
    """``(z_t, timestep, labels | None) -> prediction`` of the same shape as ``z_t``.

    Wraps a diffusers model whose forward is ``net(sample, timestep, class_labels=..., return_dict=False)``
    (``DiTTransformer2DModel``, ``UNet2DModel``...).

    Attributes:
        net: the diffusers model (``state_dict`` keys are ``net.<diffusers key>``).
        spec: kwargs that rebuild this architecture with :func:`build_model` (JSON-serializable).
        num_classes: number of real classes, ``None`` for an unconditional model.
        null_class_id: label id meaning "no class" (classifier-free guidance / unconditional).
        label_map: ``None``, or a non-persistent buffer ``(num_classes + 1,)`` mapping this model's
            label ids (the store's classes, then the null id) to the rows of the network's label
            table (a checkpoint's class ids, its own null id last); not in ``state_dict``.
    """

    label_map: Tensor | None

    def __init__(
        self,
        net: nn.Module,
        *,
        spec: dict[str, Any],
        num_classes: int | None,
        label_map: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.spec = dict(spec)
        self.family = TEXT_FAMILIES.get(type(net).__name__, "class")
        self.num_classes = num_classes
        self.null_class_id = num_classes if num_classes is not None else 1
        if label_map is not None and (num_classes is None or len(label_map) != num_classes + 1):
            raise ConfigError(f"label_map needs num_classes + 1 entries, got {len(label_map)}")
        buf = None if label_map is None else torch.tensor(label_map, dtype=torch.long)
        self.register_buffer("label_map", buf, persistent=False)

    @property
    def conditional(self) -> bool:
        """True when the model was built with classes."""
        return self.num_classes is not None

    @property
    def text_conditional(self) -> bool:
        """True for a text-to-image model (it takes ``text=``, not labels)."""
        return self.family != "class"

    def forward(
        self,
        z_t: Tensor,
        timestep: Tensor,
        labels: Tensor | None = None,
        text: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Predict eps / v / velocity for ``z_t`` ``(B, C, H, W)``.

        Args:
            z_t: noised latents.
            timestep: ``(B,)`` or scalar; the objective's ``model_timestep(t)``.
            labels: ``(B,)`` int class ids in ``[0, num_classes]`` (``num_classes`` = null), or
                ``None`` for the null class (unconditional); ignored by unconditional models.
            text: a text model's condition ``{"states" (B, L, D), "mask" (B, L)[, "pooled"
                (B, P)]}`` (`lplkit.diffusion.text_conditioning`); required by text models.
        """
        batch = z_t.shape[0]
        timestep = torch.as_tensor(timestep, device=z_t.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch)
        if self.family != "class":
            return self._text_forward(z_t, timestep, text)
        if labels is None or not self.conditional:
            labels = torch.full((batch,), self.null_class_id, dtype=torch.long, device=z_t.device)
        labels = labels.long()
        if self.label_map is not None:
            labels = self.label_map[labels]
        out = self.net(z_t, timestep, class_labels=labels, return_dict=False)[0]
        if out.shape[1] == 2 * z_t.shape[1]:  # learned sigma: the eps half (see module doc)
            out = out[:, : z_t.shape[1]]
        return out

    def _text_forward(
        self, z_t: Tensor, timestep: Tensor, text: dict[str, Tensor] | None
    ) -> Tensor:
        if text is None:
            raise ConfigError(
                f"{self.spec.get('name')} is a text-to-image model: it needs text conditioning"
            )
        states = text["states"].to(z_t.dtype)
        # diffusers turns a 0/1 (B, L) mask into an additive bias itself
        mask = text["mask"].to(z_t.dtype) if "mask" in text else None
        if self.family == "pixart":
            return self.net(
                z_t,
                encoder_hidden_states=states,
                timestep=timestep,
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                encoder_attention_mask=mask,
                return_dict=False,
            )[0]
        if self.family == "mmdit":
            return self.net(
                z_t,
                encoder_hidden_states=states,
                pooled_projections=text["pooled"].to(z_t.dtype),
                timestep=timestep,
                return_dict=False,
            )[0]
        return self.net(
            z_t, timestep, encoder_hidden_states=states, encoder_attention_mask=mask,
            return_dict=False,
        )[0]  # fmt: skip


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator adding ``fn(*, in_channels, sample_size, num_classes) -> Denoiser`` as ``name``."""

    def deco(fn: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ConfigError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def is_text_model(name: str) -> bool:
    """Whether the registered model ``name`` is text-conditioned (takes ``text=``)."""
    return name in _TEXT_MODELS


def build_model(
    name: str,
    *,
    in_channels: int,
    sample_size: int,
    num_classes: int | None = None,
    text: dict[str, Any] | None = None,
) -> Denoiser:
    """Build the registered denoiser ``name`` for ``in_channels x sample_size^2`` latents.

    ``text`` (``{"tokens", "states_dim", "pooled_dim"}``, `text_conditioning.text_dims`) is what a
    text model is built for; class models refuse it. Build on the meta device
    (``with torch.device("meta"):``) to inspect sizes without memory.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1 or None (unconditional), got {num_classes}")
    if name in _TEXT_MODELS:
        if text is None:
            raise ConfigError(f"{name} is a text-to-image model: it needs text encoder dimensions")
        return _REGISTRY[name](in_channels=in_channels, sample_size=sample_size, text=text)
    if text is not None:
        raise ConfigError(f"{name} is a class-conditional model: it takes no text conditioning")
    return _REGISTRY[name](
        in_channels=in_channels, sample_size=sample_size, num_classes=num_classes
    )


def wrap_diffusers(
    net: nn.Module,
    *,
    name: str,
    num_classes: int | None,
    label_map: list[int] | None = None,
    extra: dict[str, Any] | None = None,
) -> Denoiser:
    """A pre-trained diffusers ``DiTTransformer2DModel`` as a :class:`Denoiser`, weights untouched.

    ``spec["diffusers"]`` keeps the class and config (``extra`` adds JSON-able keys to it), so
    :func:`build_from_spec` rebuilds the same architecture for sampling and export. The label
    table's own random dropout is switched off as in the registered DiTs.
    """
    raw: Any = net.config  # a diffusers FrozenDict (nn.Module.__getattr__ types it Tensor | Module)
    config = {k: v for k, v in dict(raw).items() if not k.startswith("_")}
    for block in getattr(net, "transformer_blocks", ()):
        emb = getattr(getattr(block, "norm1", None), "emb", None)
        if emb is not None and hasattr(emb, "class_embedder"):
            emb.class_embedder.dropout_prob = 0.0
    spec = {
        "name": name,
        "in_channels": int(config["in_channels"]),
        "sample_size": int(config["sample_size"]),
        "num_classes": num_classes,
        "diffusers": {"class": type(net).__name__, "config": config, **(extra or {})},
    }
    if label_map is not None:
        spec["label_map"] = list(label_map)
    return Denoiser(any_grid(net), spec=spec, num_classes=num_classes, label_map=label_map)


def build_from_spec(spec: dict[str, Any]) -> Denoiser:
    """Rebuild a model (random weights) from its ``spec`` (run.json ``model``): a registered name,
    or a diffusers checkpoint's own config (:func:`wrap_diffusers`)."""
    extra = spec.get("diffusers")
    if not extra:
        return build_model(
            spec["name"],
            in_channels=int(spec["in_channels"]),
            sample_size=int(spec["sample_size"]),
            num_classes=spec.get("num_classes"),
            text=spec.get("text"),
        )
    import diffusers

    cls = getattr(diffusers, str(extra.get("class")), None)
    if cls is None or extra.get("class") != "DiTTransformer2DModel":
        raise ConfigError(f"model {spec['name']!r}: class {extra.get('class')!r} is not supported")
    net = cls.from_config(extra["config"])
    rest = {k: v for k, v in extra.items() if k not in ("class", "config")}
    return wrap_diffusers(net, name=spec["name"], num_classes=spec.get("num_classes"),
                          label_map=spec.get("label_map"), extra=rest)  # fmt: skip


def _dit(
    size: str, patch: int, *, in_channels: int, sample_size: int, num_classes: int | None
) -> Denoiser:
    """A ``DiTTransformer2DModel`` of the given DiT size and patch, CFG-ready (see module doc)."""
    from diffusers import DiTTransformer2DModel

    depth, hidden, heads = DIT_SIZES[size]
    if sample_size % patch:
        raise ConfigError(
            f"DiT-{size}/{patch} needs a latent size divisible by {patch}, got {sample_size}"
        )
    net = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        in_channels=in_channels,
        out_channels=in_channels,
        num_layers=depth,
        sample_size=sample_size,
        patch_size=patch,
        # one "class" when unconditional: the embedding table then holds it plus the null row
        num_embeds_ada_norm=num_classes if num_classes is not None else 1,
    )
    for block in net.transformer_blocks:
        # keep the null row but never drop labels behind the trainer's back (global RNG)
        block.norm1.emb.class_embedder.dropout_prob = 0.0
    spec = {
        "name": f"DiT-{size}/{patch}",
        "in_channels": in_channels,
        "sample_size": sample_size,
        "num_classes": num_classes,
    }
    return Denoiser(any_grid(net), spec=spec, num_classes=num_classes)


def _register_dit(size: str, patch: int) -> None:
    def factory(*, in_channels: int, sample_size: int, num_classes: int | None) -> Denoiser:
        return _dit(
            size, patch, in_channels=in_channels, sample_size=sample_size, num_classes=num_classes
        )

    register_model(f"DiT-{size}/{patch}")(factory)


for _size in ("S", "B", "L", "XL"):
    for _patch in (2, 4, 8):
        _register_dit(_size, _patch)
_register_dit("T", 2)


def _unet(
    name: str,
    *,
    in_channels: int,
    sample_size: int,
    num_classes: int | None,
    block_out_channels: tuple[int, ...],
    attention: tuple[bool, ...],
    layers_per_block: int,
    norm_num_groups: int,
) -> Denoiser:
    """A class-conditional diffusers ``UNet2DModel``; ``attention[i]``: self-attention in level i.

    Labels go through ``num_class_embeds = classes + 1`` rows (the extra one is the null class for
    CFG), added to the timestep embedding like the DiT's label table.
    """
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    if sample_size % 2 ** (levels - 1):
        raise ConfigError(
            f"{name} downsamples {levels - 1} times: the latent size must be divisible by "
            f"{2 ** (levels - 1)}, got {sample_size}"
        )
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    net = UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=block_out_channels,
        down_block_types=down,
        up_block_types=tuple(d.replace("Down", "Up") for d in reversed(down)),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        num_class_embeds=(num_classes if num_classes is not None else 1) + 1,
    )
    spec = {
        "name": name,
        "in_channels": in_channels,
        "sample_size": sample_size,
        "num_classes": num_classes,
    }
    return Denoiser(net, spec=spec, num_classes=num_classes)


@register_model("UNet-S")
def _unet_small(*, in_channels: int, sample_size: int, num_classes: int | None) -> Denoiser:
    """6.8M-parameter U-Net (64/128/128 channels, 2 res blocks per level, attention at the two
    coarser levels): the bundled OpenMoji base model's architecture (docs/base-model.md). On 1.7k
    glyphs it reaches 2x the SWD floor in ~2k CPU steps, where DiT-T/2 makes blobs."""
    return _unet(
        "UNet-S",
        in_channels=in_channels,
        sample_size=sample_size,
        num_classes=num_classes,
        block_out_channels=(64, 128, 128),
        attention=(False, True, True),
        layers_per_block=2,
        norm_num_groups=32,
    )


@register_model("UNet-T")
def _unet_tiny(*, in_channels: int, sample_size: int, num_classes: int | None) -> Denoiser:
    """A tiny class-conditional diffusers ``UNet2DModel`` (shows a non-DiT entry; tests only)."""
    return _unet(
        "UNet-T",
        in_channels=in_channels,
        sample_size=sample_size,
        num_classes=num_classes,
        block_out_channels=(32, 64),
        attention=(False, True),
        layers_per_block=1,
        norm_num_groups=8,
    )


def _text_spec(
    name: str, in_channels: int, sample_size: int, text: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        "in_channels": in_channels,
        "sample_size": sample_size,
        "num_classes": None,
        "text": {k: text.get(k) for k in ("tokens", "states_dim", "pooled_dim")},
    }


def _pixart(size: str, *, in_channels: int, sample_size: int, text: dict[str, Any]) -> Denoiser:
    """``PixArtTransformer2DModel`` of DiT size ``size``, patch 2, captions of width ``states_dim``."""
    from diffusers import PixArtTransformer2DModel

    depth, hidden, heads = DIT_SIZES[size]
    if sample_size % 2:
        raise ConfigError(f"PixArt-{size}/2 needs an even latent size, got {sample_size}")
    net = PixArtTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        in_channels=in_channels,
        out_channels=in_channels,
        num_layers=depth,
        cross_attention_dim=hidden,
        sample_size=sample_size,
        patch_size=2,
        norm_type="ada_norm_single",
        use_additional_conditions=False,
        caption_channels=int(text["states_dim"]),
    )
    spec = _text_spec(f"PixArt-{size}/2", in_channels, sample_size, text)
    return Denoiser(net, spec=spec, num_classes=None)


def _mmdit(size: str, *, in_channels: int, sample_size: int, text: dict[str, Any]) -> Denoiser:
    """``SD3Transformer2DModel`` of DiT size ``size``, patch 2: joint attention, pooled vector."""
    from diffusers import SD3Transformer2DModel

    depth, hidden, heads = DIT_SIZES[size]
    if not text.get("pooled_dim"):
        raise ConfigError(
            f"MMDiT-{size}/2 adds a pooled text vector to its timestep embedding: pass a CLIP "
            "encoder (with a pooled vector) in --text-encoder"
        )
    if sample_size % 2:
        raise ConfigError(f"MMDiT-{size}/2 needs an even latent size, got {sample_size}")
    net = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=in_channels,
        out_channels=in_channels,
        num_layers=depth,
        attention_head_dim=hidden // heads,
        num_attention_heads=heads,
        joint_attention_dim=int(text["states_dim"]),
        caption_projection_dim=hidden,
        pooled_projection_dim=int(text["pooled_dim"]),
        pos_embed_max_size=sample_size // 2,
    )
    spec = _text_spec(f"MMDiT-{size}/2", in_channels, sample_size, text)
    return Denoiser(net, spec=spec, num_classes=None)


def _unet_text(
    name: str,
    *,
    in_channels: int,
    sample_size: int,
    text: dict[str, Any],
    block_out_channels: tuple[int, ...],
    attention: tuple[bool, ...],
    layers_per_block: int,
    norm_num_groups: int,
    head_dim: int,
) -> Denoiser:
    """A ``UNet2DConditionModel`` (SD 1.x's family): cross-attention at the ``attention`` levels."""
    from diffusers import UNet2DConditionModel

    levels = len(block_out_channels)
    if sample_size % 2 ** (levels - 1):
        raise ConfigError(
            f"{name} downsamples {levels - 1} times: the latent size must be divisible by "
            f"{2 ** (levels - 1)}, got {sample_size}"
        )
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    net = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=down,
        up_block_types=tuple(
            "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)
        ),
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        norm_num_groups=norm_num_groups,
        cross_attention_dim=int(text["states_dim"]),
        attention_head_dim=tuple(c // head_dim for c in block_out_channels),
    )
    return Denoiser(net, spec=_text_spec(name, in_channels, sample_size, text), num_classes=None)


def _register_text(name: str, factory: ModelFactory) -> None:
    register_model(name)(factory)
    _TEXT_MODELS.add(name)


for _size in ("T", "S", "B", "L"):
    _register_text(f"PixArt-{_size}/2", functools.partial(_pixart, _size))
    _register_text(f"MMDiT-{_size}/2", functools.partial(_mmdit, _size))

_register_text("UNetText-S", functools.partial(
    _unet_text, "UNetText-S", block_out_channels=(64, 128, 128), attention=(False, True, True),
    layers_per_block=2, norm_num_groups=32, head_dim=32,
))  # fmt: skip
_register_text("UNetText-T", functools.partial(
    _unet_text, "UNetText-T", block_out_channels=(32, 64), attention=(False, True),
    layers_per_block=1, norm_num_groups=8, head_dim=16,
))  # fmt: skip
