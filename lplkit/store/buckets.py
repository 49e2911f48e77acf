"""Aspect-ratio buckets (issue #25): the bucket lists, the assignment rule and the bucketed layout.

A bucketed store (`lplkit encode --buckets SPEC`) holds each image at the bucket size whose aspect
ratio is nearest to its own, about `res x res` pixels in area::

    STORE/
      zarr.json                   group; attrs["lplkit"] = manifest with `buckets` (below)
      index.parquet               every row, global positions, plus a `bucket` (int16) column
      buckets/<b>/                bucket b: a complete store of its own (moments, moments_flip,
                                  labels, index.parquet, progress/, text/<name>/, manifest with
                                  `bucket`), positions 0..n_b-1, its own shard/chunk geometry

Global row order = rows grouped by bucket, each bucket's rows in source order: bucket b holds the
global positions `[start_b, start_b + n_b)`. A store without `--buckets` is exactly the square
layout of before (no `buckets` in its manifest); readers see it as one bucket.

Pure functions and constants only (no zarr, no torch): the CLI validates specs before anything runs.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from lplkit.errors import ConfigError

__all__ = [
    "BUCKETS_DIR",
    "BUCKET_SPECS",
    "DEFAULT_PATCH_MULTIPLE",
    "SDXL_BUCKETS",
    "Bucket",
    "area_buckets",
    "assign_bucket",
    "bucket_sizes",
    "bucket_url",
    "buckets_of",
    "check_multiple",
    "parse_size",
    "sdxl_buckets",
]

BUCKETS_DIR = "buckets"
#: Named `--buckets` specs; anything else is a comma list of WxH sizes.
BUCKET_SPECS = ("sdxl", "area")
#: Default `--patch-multiple`: DiT, PixArt and SD3's MMDiT embed 2x2 latent patches, so a bucket
#: side must be a multiple of (autoencoder downsampling factor) x 2 pixels.
DEFAULT_PATCH_MULTIPLE = 2

#: SDXL's multi-aspect training buckets at 1024^2 pixels, (width, height): Podell et al. 2023,
#: "SDXL: Improving Latent Diffusion Models for High-Resolution Image Synthesis", appendix I
#: (the table of resolutions; every side a multiple of 64, area within ~[0.94, 1.0] x 1024^2).
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664),
    (640, 1600), (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280),
    (832, 1216), (832, 1152), (896, 1152), (896, 1088), (960, 1088), (960, 1024), (1024, 1024),
    (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832), (1216, 832), (1280, 768),
    (1344, 768), (1344, 704), (1408, 704), (1472, 704), (1536, 640), (1600, 640), (1664, 576),
    (1728, 576), (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512),
)  # fmt: skip


@dataclass(frozen=True)
class Bucket:
    """One bucket of a store: rows `[start, start + rows)` of the global order, images `size`
    = (W, H) pixels, latents `latent_shape` = (C, h, w)."""

    id: int
    size: tuple[int, int]
    latent_shape: tuple[int, int, int]
    rows: int
    start: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": list(self.size), "latent_shape": list(self.latent_shape),
                "rows": self.rows, "start": self.start}  # fmt: skip


def buckets_of(manifest: dict[str, Any]) -> list[Bucket] | None:
    """The manifest's `buckets` as `Bucket`s, or None for a square (unbucketed) store."""
    entries = manifest.get("buckets")
    if entries is None:
        return None
    return [
        Bucket(int(e["id"]), (int(e["size"][0]), int(e["size"][1])),
               tuple(int(v) for v in e["latent_shape"]), int(e["rows"]), int(e["start"]))  # type: ignore[arg-type]
        for e in entries
    ]  # fmt: skip


def bucket_url(url: str, bucket: int) -> str:
    """URL of bucket `bucket`'s sub-store inside the store at `url`."""
    return posixpath.join(str(url).rstrip("/"), BUCKETS_DIR, str(int(bucket)))


def parse_size(text: str) -> tuple[int, int]:
    """`"384x192"` -> (384, 192) (width x height); ConfigError otherwise."""
    parts = text.lower().strip().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"bucket size {text!r} is not WIDTHxHEIGHT (e.g. 384x192)")
    w, h = (int(p) for p in parts)
    if w < 1 or h < 1:
        raise ConfigError(f"bucket size {text!r} must be positive")
    return w, h


def _round_to(x: float, multiple: int) -> int:
    return max(multiple, round(x / multiple) * multiple)


def sdxl_buckets(res: int, multiple: int) -> list[tuple[int, int]]:
    """SDXL's list scaled by res/1024 (area res^2), each side rounded to `multiple`; duplicates
    that the rounding makes (small res) are dropped."""
    out: list[tuple[int, int]] = []
    for w, h in SDXL_BUCKETS:
        size = (_round_to(w * res / 1024, multiple), _round_to(h * res / 1024, multiple))
        if size not in out:
            out.append(size)
    return out


def area_buckets(res: int, step: int, max_aspect: float) -> list[tuple[int, int]]:
    """kohya sd-scripts' rule (`BucketManager.make_buckets`): for each width W = k * step, the
    tallest H = m * step with W * H <= res^2; both orientations; kept when
    max(W/H, H/W) <= max_aspect; of sizes with the same aspect ratio only the largest area."""
    area = res * res
    found: dict[tuple[int, int], tuple[int, int]] = {}  # reduced aspect -> largest size
    for w in range(step, area // step + 1, step):
        h = (area // w) // step * step
        if h < step:
            break
        for size in ((w, h), (h, w)):
            if max(size) / min(size) > max_aspect:
                continue
            g = math.gcd(*size)
            key = (size[0] // g, size[1] // g)
            if key not in found or size[0] * size[1] > found[key][0] * found[key][1]:
                found[key] = size
    return list(found.values())


def bucket_sizes(
    spec: str, res: int, *, step: int = 64, max_aspect: float = 4.0, multiple: int = 1
) -> list[tuple[int, int]]:
    """Bucket sizes (W, H) of `--buckets SPEC`, sorted by aspect W/H (tall first), refused
    (`ConfigError`, one line) when a side is not a multiple of `multiple`."""
    if spec == "sdxl":
        sizes = sdxl_buckets(res, multiple)
    elif spec == "area":
        if step % multiple:
            raise ConfigError(
                f"--bucket-step {step} is not a multiple of {multiple} (the autoencoder's "
                "downsampling factor x --patch-multiple); use a multiple of it"
            )
        sizes = area_buckets(res, step, max_aspect)
        if not sizes:
            raise ConfigError(f"--buckets area: no size fits --res {res} with --bucket-step {step}")
    else:
        sizes = []
        for part in spec.split(","):
            size = parse_size(part)
            if size not in sizes:
                sizes.append(size)
    check_multiple(sizes, multiple)
    return sorted(sizes, key=lambda s: (s[0] / s[1], s[0] * s[1]))


def check_multiple(sizes: Sequence[tuple[int, int]], multiple: int) -> None:
    """ConfigError naming the first size with a side that is not a multiple of `multiple`."""
    for w, h in sizes:
        if w % multiple or h % multiple:
            raise ConfigError(
                f"bucket {w}x{h} is not a multiple of {multiple} (the autoencoder's downsampling "
                "factor x --patch-multiple) in both sides; choose sizes that are"
            )


def assign_bucket(sizes: Sequence[tuple[int, int]], width: int, height: int) -> int:
    """Index of the size whose aspect ratio is nearest to `width / height` in log distance:

        b = argmin_k |log(W_k / H_k) - log(width / height)|,

    ties broken for the squarer bucket (smaller |log(W_k / H_k)|), then the lower index. Computed
    exactly: |log x - log y| orders like max(x/y, y/x), a ratio of integers (no float ties)."""

    def distance(a: Fraction, b: Fraction) -> Fraction:
        return max(a / b, b / a)

    image = Fraction(int(width), int(height))
    return min(
        range(len(sizes)),
        key=lambda k: (
            distance(Fraction(*sizes[k]), image),
            distance(Fraction(*sizes[k]), Fraction(1)),
            k,
        ),
    )
