"""`TextConfig`: what `lplkit encode-text` does (also the text options of `lplkit encode`).
Light (no torch/transformers), so the CLI builds its flags from it."""

from __future__ import annotations

from dataclasses import dataclass

from lplkit.config import ConfigFlag, check_ranges, ranged
from lplkit.errors import ConfigError
from lplkit.text.spec import PRESETS, default_name

__all__ = ["BATCH", "ENCODE_TEXT_FLAGS", "MAX_TOKENS", "TEXT_OPTION_FLAGS", "TextConfig"]

MAX_TOKENS = {"ge": 1, "le": 4096}  # --text-max-tokens
BATCH = {"ge": 1, "le": 1 << 16}  # --text-batch-size


@dataclass
class TextConfig:
    """What `lplkit encode-text` does (and the text options of `lplkit encode`)."""

    store: str
    text_encoder: str
    name: str | None = None  # default: the spec's subfolder, else its repo/dir name
    text_encoder_revision: str | None = None
    text_preset: str | None = None  # default: sd3-clip (CLIP), pixart-sigma-t5 (T5)
    text_layer: str | None = None  # last | penultimate (CLIP); default: the preset's
    text_max_tokens: int | None = ranged(None, **MAX_TOKENS)  # default: the preset's
    text_dtype: str = "float16"
    text_batch_size: int = ranged(64, **BATCH)  # captions per encoder call
    device: str = "auto"

    def validate(self) -> None:
        from lplkit.store import format as fmt
        from lplkit.store.text import check_name

        check_ranges(self)
        if self.text_dtype not in fmt.DTYPES:
            raise ConfigError(
                f"--text-dtype must be one of {', '.join(fmt.DTYPES)}, got {self.text_dtype!r}"
            )
        if self.text_preset is not None and self.text_preset not in PRESETS:
            raise ConfigError(
                f"--text-preset must be one of {', '.join(PRESETS)}, got {self.text_preset!r}"
            )
        check_name(self.name or default_name(self.text_encoder))


#: the text options `lplkit encode` and `lplkit encode-text` share
TEXT_OPTION_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("text_encoder_revision", "--text-encoder-revision",
               "Hub branch, tag or commit of a hub-id text encoder (the commit is recorded)."),
    ConfigFlag("text_preset", "--text-preset",
               f"Pipeline choices ({', '.join(PRESETS)}); default sd3-clip for CLIP (penultimate "
               "layer + pooled, 77 tokens), pixart-sigma-t5 for T5 (300 tokens, mask)."),
    ConfigFlag("text_layer", "--text-layer", "CLIP hidden state: last or penultimate (default: "
               "the preset's)."),
    ConfigFlag("text_max_tokens", "--text-max-tokens",
               "Tokens L per caption (padded; longer captions truncated and counted); default: "
               "the preset's (CLIP 77, T5 300 PixArt-Sigma / 256 SD3)."),
    ConfigFlag("text_dtype", "--text-dtype", "Stored text dtype: float16, bfloat16 or float32."),
    ConfigFlag("text_batch_size", "--text-batch-size", "Captions per text-encoder call."),
)  # fmt: skip

#: every `lplkit encode-text` flag
ENCODE_TEXT_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("store", "STORE", "A finished latent store (path or URL)."),
    ConfigFlag("text_encoder", "--text-encoder",
               "Text encoder: hub id ORG/NAME, a pipeline subfolder ORG/NAME:text_encoder_2, or a "
               "local DIR[:SUBFOLDER]; loaded like --vae (HF_HUB_OFFLINE=1 reads the hub cache)."),
    ConfigFlag("name", "--name", "Name in the store (default: the subfolder, else the repo name)."),
    *TEXT_OPTION_FLAGS,
    ConfigFlag("device", "--device", "auto, cpu, cuda, cuda:1 ..."),
)  # fmt: skip
