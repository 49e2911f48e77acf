"""Text encoder specs, families and the diffusers pipelines' choices as named presets (light:
no torch or transformers import, so the CLI can show and check them)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lplkit.errors import ConfigError

__all__ = ["BUNDLED_TEXT_ENCODERS", "DEFAULT_PRESET", "FAMILIES", "LAYERS", "PRESETS",
           "TextPreset", "bundled_path", "default_name", "parse_spec"]  # fmt: skip

#: Bundled short names -> directories under ``lplkit/assets/`` (docs/t2i-demo.md): a frozen random
#: CLIPTextModel with a tokenizer trained on the OpenMoji glyph names.
BUNDLED_TEXT_ENCODERS: dict[str, str] = {"openmoji-clip": "openmoji-clip"}

#: transformers class -> family
FAMILIES = {
    "CLIPTextModel": "clip",
    "CLIPTextModelWithProjection": "clip",
    "T5EncoderModel": "t5",
}
LAYERS = ("last", "penultimate")


@dataclass(frozen=True)
class TextPreset:
    family: str
    layer: str  # "last" | "penultimate"
    max_tokens: int
    pass_mask: bool  # whether the encoder is given the attention mask
    pooled: bool  # whether the pooled / projected vector is kept


PRESETS: dict[str, TextPreset] = {
    "sd3-clip": TextPreset("clip", "penultimate", 77, False, True),  # SD3 and SDXL
    "sdxl-clip": TextPreset("clip", "penultimate", 77, False, True),
    "sd-clip": TextPreset("clip", "last", 77, False, True),  # SD 1.x / 2.x
    "sd3-t5": TextPreset("t5", "last", 256, False, False),
    "pixart-sigma-t5": TextPreset("t5", "last", 300, True, False),
    "pixart-alpha-t5": TextPreset("t5", "last", 120, True, False),
}
DEFAULT_PRESET = {"clip": "sd3-clip", "t5": "pixart-sigma-t5"}


def bundled_path(name: str) -> Path | None:
    """The package directory of a bundled encoder name, None for any other spec."""
    if name not in BUNDLED_TEXT_ENCODERS:
        return None
    return Path(str(resources.files("lplkit") / "assets" / BUNDLED_TEXT_ENCODERS[name]))


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`org/name`, `org/name:text_encoder_2`, `DIR` or `DIR:subfolder` -> (repo or dir, subfolder)."""
    if Path(spec).expanduser().exists() or ":" not in spec:
        return spec, None
    head, sub = spec.rsplit(":", 1)
    if not head or not sub.strip("/"):
        raise ConfigError(
            f"--text-encoder {spec!r}: expected ORG/NAME[:SUBFOLDER] or DIR[:SUBFOLDER]"
        )
    return head, sub.strip("/")


def default_name(spec: str) -> str:
    """The store name of an encoder: its subfolder (`text_encoder_2`), else the repo/dir name."""
    repo, sub = parse_spec(spec)
    name = sub or Path(repo.rstrip("/")).name
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in name)[:64] or "text"
