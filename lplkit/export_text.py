"""A text-to-image run -> a diffusers ``PixArtSigmaPipeline`` or ``StableDiffusion3Pipeline`` directory.

Which pipeline (the run's denoiser family and run.json ``text_encoders``, in the recorded order):

| run | pipeline | encoders it needs |
| ``PixArt-*/2`` | ``PixArtSigmaPipeline`` | one T5 (``T5EncoderModel``) given the attention mask (presets ``pixart-sigma-t5`` / ``pixart-alpha-t5``) |
| ``MMDiT-*/2`` | ``StableDiffusion3Pipeline`` | CLIP-L, CLIP-G (``CLIPTextModelWithProjection``, penultimate layer, pooled, no mask, one token count) then T5 (no mask), widths ``D_L + D_G <= D_T5`` |

Anything else (``UNetText-*``, PixArt on CLIP or on several encoders, MMDiT on another set) is
refused in one line saying what the pipeline needs. ``UNetText-*`` has no stock match:
``StableDiffusionPipeline`` feeds its U-Net no cross-attention mask, while lplkit masks the padding
tokens.

Why these conditions: the pipelines encode prompts themselves, so the exported encoders must give
what the store cached. ``PixArtSigmaPipeline.encode_prompt`` passes T5 the mask and gives the
transformer ``encoder_attention_mask`` (as lplkit's PixArt does). ``StableDiffusion3Pipeline``
takes CLIP ``hidden_states[-2]`` and ``text_embeds`` (output ``[0]`` of a
``CLIPTextModelWithProjection``; a plain ``CLIPTextModel``'s ``[0]`` is its last hidden state),
pads ``cat(clip_L, clip_G)`` to the T5 width (a wider CLIP pair would be cut) and concatenates it
with T5 along tokens, pooled ``cat(pooled_L, pooled_G)``: `text_conditioning.combine` on the same
three. The CLIP token count is ``tokenizer.model_max_length`` (set to the recorded ``max_tokens``
here); T5's is the call's ``max_sequence_length`` (default 256 for SD3, 300 for PixArt), so a run
cached at another L is called with ``max_sequence_length=L`` (in ``notes`` and ``lplkit.json``).

The folder: ``transformer/`` (the run's network), ``vae/`` (normalization folded as the class
export does, `lplkit.export.fold_normalization`; SD3 decodes ``z / scaling_factor + shift_factor``,
so ``shift_factor = 0``), ``scheduler/`` (`lplkit.export` picks it: DDIM for eps/v, Euler on
lplkit's grid for flow), the text encoders and tokenizers re-saved with ``save_pretrained`` from
the recorded identity (offline: hub cache at the recorded commit, or the recorded directory),
and ``lplkit.json`` (normalization, autoencoder, objective, ``text_encoders``, the call arguments).

``PixArtSigmaPipeline`` multiplies the initial noise by ``scheduler.init_noise_sigma``, which
diffusers' flow schedulers lack: a flow export stores ``init_noise_sigma = 1`` in
``scheduler_config.json`` (diffusers warns that the key is unexpected but keeps it in the config,
where the attribute is read from).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lplkit.errors import ConfigError
from lplkit.text.encoders import TextEncoder, TextEncoderError, load_text_encoder

__all__ = ["PIXART", "SD3", "check_text_encoders", "export_text_pipeline", "pipeline_call"]

PIXART = "PixArtSigmaPipeline"
SD3 = "StableDiffusion3Pipeline"

_PIXART_NEEDS = (
    f"{PIXART} needs one T5 encoder (T5EncoderModel) given the attention mask (--text-preset "
    "pixart-sigma-t5 or pixart-alpha-t5)"
)
_SD3_NEEDS = (
    f"{SD3} needs three encoders, in this order: CLIP-L and CLIP-G (CLIPTextModelWithProjection, "
    "--text-preset sd3-clip: penultimate layer, pooled, no mask, the same --text-max-tokens) and "
    "T5 (T5EncoderModel, --text-preset sd3-t5: no mask), passed as --text-encoder L --text-encoder "
    "G --text-encoder T5 (the CLIPs in that order)"
)


def _describe(record: Sequence[Mapping[str, Any]]) -> str:
    if not record:
        return "no text encoder"
    return ", ".join(
        f"{e.get('name')} ({e.get('class')}, preset {e.get('preset')})" for e in record
    )


def _is_sd3_clip(e: Mapping[str, Any]) -> bool:
    return (
        e.get("class") == "CLIPTextModelWithProjection"
        and e.get("layer") == "penultimate"
        and not e.get("pass_mask")
        and bool(e.get("pooled_size"))
    )


def check_text_encoders(
    family: str, name: str, record: Sequence[Mapping[str, Any]]
) -> tuple[str, list[Mapping[str, Any]]]:
    """The pipeline a text run exports to and its encoders in the pipeline's order (SD3: CLIP-L,
    CLIP-G, T5; `text_conditioning.combine` puts the CLIPs first whatever the recorded order), or
    ConfigError in one line saying what the pipeline needs."""
    if family == "pixart":
        ok = (
            len(record) == 1
            and record[0].get("class") == "T5EncoderModel"
            and bool(record[0].get("pass_mask"))
            and record[0].get("layer", "last") == "last"
        )
        if not ok:
            raise ConfigError(f"{_PIXART_NEEDS}; this run ({name}) reads {_describe(record)}")
        return PIXART, list(record)
    if family == "mmdit":
        clips = [e for e in record if e.get("family") == "clip"]
        rest = [e for e in record if e.get("family") != "clip"]
        ok = (
            len(clips) == 2
            and len(rest) == 1
            and all(_is_sd3_clip(e) for e in clips)
            and clips[0].get("max_tokens") == clips[1].get("max_tokens")
            and rest[0].get("class") == "T5EncoderModel"
            and not rest[0].get("pass_mask")
        )
        if not ok:
            raise ConfigError(f"{_SD3_NEEDS}; this run ({name}) reads {_describe(record)}")
        clip_width = int(clips[0]["hidden_size"]) + int(clips[1]["hidden_size"])
        if clip_width > int(rest[0]["hidden_size"]):
            raise ConfigError(
                f"{SD3} pads the CLIP states ({clip_width} wide) to the T5 width "
                f"({rest[0]['hidden_size']}) and would cut them; lplkit padded T5 instead: this "
                "run has no exact SD3 export"
            )
        return SD3, [*clips, rest[0]]
    if family == "unet-text":
        raise ConfigError(
            f"{name}: no diffusers pipeline reproduces a UNetText run (StableDiffusionPipeline "
            "feeds its U-Net no cross-attention mask, lplkit masks the padding tokens); export "
            f"PixArt-*/2 runs ({PIXART}, one T5) or MMDiT-*/2 runs ({SD3}, CLIP-L + CLIP-G + T5)"
        )
    raise ConfigError(f"{name} is not a text-to-image model")


def _spec(entry: Mapping[str, Any]) -> str:
    sub = entry.get("subfolder")
    return f"{entry['id']}:{sub}" if sub else str(entry["id"])


def _load(entry: Mapping[str, Any]) -> TextEncoder:
    """The recorded encoder, loaded again at its identity (offline), its config hash checked."""
    te = load_text_encoder(_spec(entry), revision=entry.get("revision"), preset=entry.get("preset"),
                           layer=entry.get("layer"), max_tokens=entry.get("max_tokens"))  # fmt: skip
    want = entry.get("config_hash")
    if want and te.identity["config_hash"] != want:
        raise TextEncoderError(
            f"the run's text encoder {_spec(entry)} has changed since training (config hash "
            f"{te.identity['config_hash'][:12]}, recorded {str(want)[:12]}): export needs the "
            "encoder the run was trained on"
        )
    # the pipelines pad CLIP prompts to the tokenizer's model_max_length (SD3)
    te.tokenizer.model_max_length = te.max_tokens
    return te


def pipeline_call(pipeline: str, record: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``pipe(...)`` arguments, besides prompt/steps/guidance/generator, that reproduce lplkit."""
    if pipeline == PIXART:
        return {"max_sequence_length": int(record[0]["max_tokens"]),
                "use_resolution_binning": False, "clean_caption": False}  # fmt: skip
    return {"max_sequence_length": int(record[2]["max_tokens"])}


def export_text_pipeline(
    pipeline: str,
    record: Sequence[Mapping[str, Any]],
    *,
    transformer: torch.nn.Module,
    vae: Any,
    scheduler: Any,
    out: Path,
) -> list[str]:
    """Load the encoders, assemble ``pipeline`` and ``save_pretrained`` it to ``out``; ``notes``."""
    import diffusers

    encoders = [_load(e) for e in record]
    flow = type(scheduler).__name__.startswith("Flow")
    if pipeline == PIXART:
        if flow and not hasattr(scheduler, "init_noise_sigma"):
            scheduler.register_to_config(init_noise_sigma=1.0)  # see the module docstring
        te = encoders[0]
        pipe = diffusers.PixArtSigmaPipeline(tokenizer=te.tokenizer, text_encoder=te.model, vae=vae,
                                             transformer=transformer, scheduler=scheduler)  # fmt: skip
    else:
        vae.register_to_config(shift_factor=0.0)  # SD3 adds it after dividing by scaling_factor
        (l_enc, g_enc, t5) = encoders
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=scheduler, vae=vae,
            text_encoder=l_enc.model, tokenizer=l_enc.tokenizer,
            text_encoder_2=g_enc.model, tokenizer_2=g_enc.tokenizer,
            text_encoder_3=t5.model, tokenizer_3=t5.tokenizer,
        )  # fmt: skip
    pipe.save_pretrained(out, safe_serialization=True)
    call = pipeline_call(pipeline, record)
    args = ", ".join(f"{k}={v!r}" for k, v in call.items())
    notes = [f"call pipe(prompts, num_inference_steps=S, guidance_scale=W, generator=torch."
             f"Generator().manual_seed(SEED), {args}) to reproduce `lplkit sample`"]  # fmt: skip
    if pipeline == PIXART:
        notes.append(f"{PIXART} lowercases and strips prompts, lplkit does not: the images match "
                     "for lowercase prompts")  # fmt: skip
    notes.append("guidance: the pipelines guide only when guidance_scale > 1 (lplkit: any w != 1)")
    return notes


def text_record(record: Sequence[Mapping[str, Any]], pipeline: str) -> dict[str, Any]:
    """What lplkit.json adds for a text export: the encoders and the pipeline call."""
    return {"pipeline": pipeline, "text_encoders": json.loads(json.dumps(list(record), default=str)),
            "call": pipeline_call(pipeline, record)}  # fmt: skip
