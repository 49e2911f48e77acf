"""`EvalConfig`: what `lplkit eval` compares and how, and its flags (`EVAL_FLAGS`); torch-free.

`lplkit.metrics.evaluate.EvalOptions.from_config` turns it into the options `evaluate()` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lplkit.config import MAX_BATCH, ConfigFlag, ranged

__all__ = ["EVAL_FLAGS", "EvalConfig"]


@dataclass
class EvalConfig:
    """Settings of one `lplkit eval` call."""

    samples: str
    ref: str
    floor: str | None = None
    metrics: str = "swd,spectrum"  # comma list of swd, spectrum, fid, clip
    n: int | None = ranged(None, ge=1)  # None: every image
    seed: int = ranged(0, ge=0)
    inception: str | None = None
    clip_model: str | None = None  # CLIPModel dir or cached hub id: adds the CLIP score
    batch_size: int = ranged(64, ge=1, le=MAX_BATCH)
    device: str = "cpu"
    swd_dirs: int = ranged(512, ge=1, le=1 << 16)  # SWDConfig.dirs_per_repeat
    swd_repeats: int = ranged(4, ge=1, le=1024)  # SWDConfig.dir_repeats
    spectrum_mode: str = "gray"


EVAL_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("samples", "--samples", "Folder of PNG/JPEG or .npz (arr_0 uint8 NHWC)."),
    ConfigFlag(
        "ref", "--ref", "Reference: latent store, image folder, or .npz (images and/or mu/sigma)."
    ),
    ConfigFlag(
        "floor",
        "--floor",
        "Held-out real images (e.g. the test split's store): also report their metrics against "
        "--ref, the floor a perfect model reaches, and samples/floor per SWD level.",
    ),
    ConfigFlag("metrics", "--metrics", "Comma list of swd, spectrum, fid, clip."),
    ConfigFlag("n", "--n", "Max images per set (seeded random subset)."),
    ConfigFlag("seed", "--seed", "Seed for subsets, SWD patches and directions."),
    ConfigFlag("inception", "--inception", "inception-2015-12-05.pt TorchScript file (for fid)."),
    ConfigFlag(
        "clip_model",
        "--clip-model",
        "CLIP score against the samples' prompts.json: a CLIPModel + CLIPProcessor directory, or "
        "a hub id in the local cache (never downloaded).",
    ),
    ConfigFlag("batch_size", "--batch-size", "Images per batch."),
    ConfigFlag("device", "--device", "torch device (decoding, features, SWD)."),
    ConfigFlag("swd_dirs", "--swd-dirs", "SWD random directions per repeat."),
    ConfigFlag("swd_repeats", "--swd-repeats", "SWD direction repeats."),
    ConfigFlag("spectrum_mode", "--spectrum-mode", "gray or rgb."),
)
