"""`EncodeConfig`: what `lplkit encode` writes into a store, and its flags (`ENCODE_FLAGS`).

Torch-free, so that `lplkit encode --help` is built from it without importing the encoder
(`lplkit.encode.encode_dataset` runs it). A new option is a field here plus a row in
`ENCODE_FLAGS`: the CLI flag, its range check, `--config`/`--set` and the printed config follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lplkit.autoencoders.choice import autoencoder_choices
from lplkit.config import MAX_BATCH, ConfigFlag, check_ranges, ranged
from lplkit.errors import ConfigError
from lplkit.store import format as fmt
from lplkit.store.buckets import BUCKET_SPECS, DEFAULT_PATCH_MULTIPLE, parse_size
from lplkit.text.config import BATCH as TEXT_BATCH
from lplkit.text.config import MAX_TOKENS, TEXT_OPTION_FLAGS, TextConfig
from lplkit.text.spec import default_name

__all__ = ["AUTOCAST_DTYPES", "ENCODE_FLAGS", "EncodeConfig"]

#: `--autocast` values: the autoencoder's compute dtype (none = fp32).
AUTOCAST_DTYPES = ("none", "bfloat16", "float16")


@dataclass
class EncodeConfig:
    """What `lplkit encode` does (one field per CLI flag, plus `min_side`)."""

    dataset: str
    out: str
    res: int = ranged(256, ge=1, le=8192)  # `lplkit encode` requires --res
    vae: str | None = None  # None -> tiny-openmoji for --dataset openmoji, else an error
    vae_subfolder: str | None = None
    vae_revision: str | None = None  # hub branch/tag/commit of a hub-id --vae
    split: str | None = None
    flip: bool = False
    batch_size: int = ranged(32, ge=1, le=MAX_BATCH)
    workers: int | None = ranged(None, ge=0, le=1024)  # None -> lplkit.encode.default_workers()
    shard_size: int | None = ranged(None, ge=1, le=MAX_BATCH)  # rows per shard, instead of shard_mb
    # MiB of rows (moments + flip copy + label) per shard, None = fmt.DEFAULT_SHARD_MB; rows per
    # shard and per inner chunk derive from it (fmt.store_geometry: why 128 MiB, and the chunks)
    shard_mb: float | None = ranged(None, gt=0.0, le=fmt.MAX_SHARD_MB)
    dtype: str = fmt.DEFAULT_DTYPE  # store dtype of the moments
    # Aspect-ratio buckets (lplkit.store.buckets): sdxl | area | W1xH1,W2xH2,... ; None = square
    buckets: str | None = None
    bucket_step: int = ranged(64, ge=1, le=8192)  # --buckets area: sides are multiples of this
    max_aspect: float = ranged(4.0, ge=1.0, le=64.0)  # --buckets area: max(W/H, H/W)
    # bucket sides must be multiples of (autoencoder factor) x this: the denoiser's patch size
    patch_multiple: int = ranged(DEFAULT_PATCH_MULTIPLE, ge=1, le=64)
    autocast: str = "none"  # compute dtype of the autoencoder: none (fp32) | bfloat16 | float16
    limit: int | None = ranged(None, ge=1)
    strict: bool = False
    image_column: str | None = None
    label_column: str | None = None
    caption_column: str | None = None
    revision: str | None = None
    device: str = "auto"  # auto = cuda when available, else cpu
    log_every: float = ranged(30.0, ge=0.0)  # progress line period when stderr is not a terminal
    min_side: int | None = ranged(None, ge=1)  # None: lplkit.data.transforms.MIN_IMAGE_SIDE
    # Text encoders whose outputs on each row's caption are cached (lplkit.text.cache)
    text_encoder: list[str] = field(default_factory=list)  # ORG/NAME[:SUBFOLDER] or DIR[:SUB]
    text_encoder_revision: str | None = None  # hub branch/tag/commit of the hub-id encoders
    text_preset: str | None = None  # sd3-clip, pixart-sigma-t5, ... (default: by family)
    text_layer: str | None = None  # CLIP: last | penultimate (default: the preset's)
    text_max_tokens: int | None = ranged(None, **MAX_TOKENS)  # default: the preset's L
    text_dtype: str = fmt.DEFAULT_DTYPE  # stored dtype of the text states and pooled vectors
    text_batch_size: int = ranged(64, **TEXT_BATCH)  # captions per text-encoder call

    def text_configs(self) -> list[TextConfig]:
        """One `TextConfig` per --text-encoder (stored under `default_name`, which must differ)."""
        out, names = [], set()
        for spec in self.text_encoder:
            name = default_name(spec)
            if name in names:
                raise ConfigError(
                    f"two --text-encoder store under the name {name!r}; use `lplkit encode-text "
                    "--name` for the second"
                )
            names.add(name)
            out.append(TextConfig(store=self.out, text_encoder=spec, name=name,
                                  text_encoder_revision=self.text_encoder_revision,
                                  text_preset=self.text_preset, text_layer=self.text_layer,
                                  text_max_tokens=self.text_max_tokens, text_dtype=self.text_dtype,
                                  text_batch_size=self.text_batch_size,
                                  device=self.device))  # fmt: skip
        return out

    def validate(self) -> None:
        """The choices that are not ranges (ranges are checked where the config is built)."""
        check_ranges(self, "encode: ")
        if self.shard_size is not None and self.shard_mb is not None:
            raise ConfigError("--shard-size and --shard-mb both size the shards: pass one")
        if self.dtype not in fmt.DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(fmt.DTYPES)}, got {self.dtype!r}")
        if self.autocast not in AUTOCAST_DTYPES:
            raise ConfigError(
                f"--autocast must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.autocast!r}"
            )
        for text in self.text_configs():
            text.validate()
        if self.buckets is not None and self.buckets not in BUCKET_SPECS:
            for part in self.buckets.split(","):
                parse_size(part)  # the sizes' multiple is checked once the autoencoder is known

    def summary(self) -> dict[str, Any]:
        """The settings worth a line at start (unset options left out)."""
        return {k: v for k, v in vars(self).items() if v is not None}


# Every `lplkit encode` flag, declared once (lplkit.cli.options builds the typer signature).
ENCODE_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag(
        "dataset",
        "--dataset",
        "Preset (imagenet, cifar10, cifar100, mnist, openmoji), image folder (class folders, or "
        "datasets imagefolder with metadata.jsonl/split folders), parquet file/glob/directory "
        "(hub layout), save_to_disk directory, WebDataset shards (shards/{00000..00099}.tar), or "
        "hub id org/name. Prefixes folder:, parquet:, disk:, wds:, hub:, preset: force a kind. "
        "See docs/data-sources.md.",
    ),
    ConfigFlag("res", "--res", "Image resolution (ADM center crop).", required=True),
    ConfigFlag("out", "--out", "Store path or URL (s3://... via fsspec)."),
    ConfigFlag(
        "vae",
        "--vae",
        "Autoencoder: hub id, local diffusers dir, or bundled name. Required unless --dataset "
        f"openmoji (default tiny-openmoji). Common: {autoencoder_choices()}.",
    ),
    ConfigFlag("vae_subfolder", "--vae-subfolder", "Subfolder of the autoencoder (e.g. vae)."),
    ConfigFlag(
        "vae_revision",
        "--vae-revision",
        "Hub branch, tag or commit of a hub-id --vae (the resolved commit is recorded).",
    ),
    ConfigFlag(
        "split",
        "--split",
        "Dataset split (default train); a split that does not exist lists those that do.",
    ),
    ConfigFlag("flip", "--flip", "Also store the flipped image's moments."),
    ConfigFlag("batch_size", "--batch-size", "Images per autoencoder call."),
    ConfigFlag(
        "workers",
        "--workers",
        "DataLoader workers (decode + crop); default: cores - 1, at most 8.",
    ),
    ConfigFlag("shard_size", "--shard-size", "Samples per store shard, instead of --shard-mb."),
    ConfigFlag(
        "shard_mb",
        "--shard-mb",
        f"MiB per store shard (default {fmt.DEFAULT_SHARD_MB:g}; moments, flips and labels): rows "
        "per shard follow from the latent size, inner chunks are 64 rows, at most 1 MiB. Not with "
        "--shard-size. See docs/store-format.md.",
    ),
    ConfigFlag("dtype", "--dtype", "Stored moments dtype: float16, bfloat16 or float32."),
    ConfigFlag(
        "buckets",
        "--buckets",
        "Aspect-ratio buckets: each image is resized (never stretched) and center-cropped to the "
        "bucket whose aspect ratio is nearest its own. sdxl (SDXL's list scaled to --res), area "
        "(every WxH multiple of --bucket-step with W*H <= res^2 within --max-aspect), or "
        "W1xH1,W2xH2,... See docs/store-format.md.",
    ),
    ConfigFlag(
        "bucket_step", "--bucket-step", "--buckets area: bucket sides are multiples of this."
    ),
    ConfigFlag("max_aspect", "--max-aspect", "--buckets area: largest max(W/H, H/W) of a bucket."),
    ConfigFlag(
        "patch_multiple",
        "--patch-multiple",
        "Bucket sides must be multiples of the autoencoder's downsampling factor times this (the "
        "denoiser's patch size: 2 for DiT, PixArt, SD3); other buckets are refused.",
    ),
    ConfigFlag("autocast", "--autocast", "Autoencoder compute: none (fp32), bfloat16 or float16."),
    ConfigFlag("limit", "--limit", "Encode only the first N images."),
    ConfigFlag("strict", "--strict", "Stop at the first bad image instead of skipping it."),
    ConfigFlag("image_column", "--image-column", "Image column (hub/parquet; auto-detected)."),
    ConfigFlag("label_column", "--label-column", "Label column (hub/parquet; auto-detected)."),
    ConfigFlag(
        "caption_column", "--caption-column", "Caption column (hub/parquet; auto-detected)."
    ),
    ConfigFlag("revision", "--revision", "Hub dataset revision."),
    ConfigFlag("device", "--device", "auto, cpu, cuda, cuda:1 ..."),
    ConfigFlag(
        "log_every",
        "--log-every",
        "When stderr is not a terminal (a SLURM log, a pipe): one progress line (count, rate, "
        "ETA) every this many seconds instead of a progress bar.",
    ),
    ConfigFlag(
        "text_encoder",
        "--text-encoder",
        "Text encoder whose outputs on each row's caption are cached in the store (repeat the "
        "flag, or separate with commas, for several): hub id ORG/NAME, pipeline subfolder "
        "ORG/NAME:text_encoder_2, or a local DIR[:SUBFOLDER]; see docs/store-format.md.",
        repeat=True,
    ),
    *TEXT_OPTION_FLAGS,
)
