"""`TextConfig`: what `lplkit encode-text` does (also the text options of `lplkit encode`).
Light (no torch/transformers), so the CLI builds its flags from it."""

from __future__ import annotations

from dataclasses import dataclass

from lplkit.config import check_ranges, ranged
from lplkit.errors import ConfigError
from lplkit.text.spec import PRESETS, default_name

__all__ = ["BATCH", "MAX_TOKENS", "TextConfig"]

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
