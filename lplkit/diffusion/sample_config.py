"""`SampleConfig`: what `lplkit sample` draws from a run, and its flags (`SAMPLE_FLAGS`).

Torch-free (the `--help` of the CLI is built from it); `lplkit.diffusion.generate.sample_run` takes
the same settings as keyword arguments and checks them against these fields' ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

from lplkit.config import MAX_BATCH, MAX_SAMPLER_STEPS, ConfigFlag, ranged

__all__ = ["SAMPLE_FLAGS", "SampleConfig"]


@dataclass
class SampleConfig:
    """Settings of one `lplkit sample` call."""

    run: str
    ema: bool = True
    n: int = ranged(16, ge=1, le=MAX_BATCH)
    steps: int = ranged(50, ge=1, le=MAX_SAMPLER_STEPS)
    guidance: float = ranged(1.0, ge=0.0)  # classifier-free guidance scale (`--cfg`)
    sampler: str | None = None  # None: by objective (heun for flow, ddim otherwise)
    seed: int = ranged(0, ge=0)
    # class ids cycled to n (each also < the run's class count, checked against the run)
    labels: tuple[int, ...] | None = ranged(None, ge=0)
    # text runs: the prompts, cycled to n (one source of the three)
    prompts: tuple[str, ...] | None = None
    prompts_file: str | None = None  # one prompt per line
    prompts_from_store: str | None = None  # captions of a held-out store's rows (seeded pick)
    # image sizes WxH in pixels, each one of the run's store buckets; None: the run's default
    size: tuple[str, ...] | None = None
    out: str | None = None  # None: RUN/samples/step_<step>/
    batch_size: int = ranged(32, ge=1, le=MAX_BATCH)
    vae: str | None = None
    device: str = "auto"


SAMPLE_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag(
        "run",
        "--run",
        "Run directory written by `lplkit train`, or a base (bundled name such as openmoji-base, "
        "or an exported base directory).",
    ),
    ConfigFlag("ema", "--ema/--no-ema", "EMA weights (default) or raw."),
    ConfigFlag("n", "--n", "Number of images."),
    ConfigFlag("steps", "--steps", "Sampler steps."),
    ConfigFlag("guidance", "--cfg", "Classifier-free guidance weight.", aliases=("--guidance",)),
    ConfigFlag("sampler", "--sampler", "ddim (eps/v) or euler/heun (flow); default by objective."),
    ConfigFlag("seed", "--seed", "Seed of the initial noise."),
    ConfigFlag(
        "labels",
        "--labels",
        "Class runs: comma-separated class ids (cycled to N); default 0,1,2,...",
    ),
    ConfigFlag(
        "prompts",
        "--prompt",
        "Text runs: a prompt (repeat for several; cycled to N).",
        repeat=True,
        whole=True,
    ),
    ConfigFlag("prompts_file", "--prompts", "Text runs: a file of prompts, one per line."),
    ConfigFlag(
        "prompts_from_store",
        "--prompts-from-store",
        "Text runs: the captions of N rows (seeded pick) of a held-out store, e.g. one encoded "
        "from the test split.",
    ),
    ConfigFlag(
        "size",
        "--size",
        "Image size(s) WxH in pixels, comma-separated, each one of the run's store buckets "
        "(N images per size); default: the run's default size.",
    ),
    ConfigFlag("out", "--out", "Output dir (default RUN/samples/)."),
    ConfigFlag("batch_size", "--batch-size", "Images per model batch."),
    ConfigFlag("vae", "--vae", "Override the autoencoder."),
    ConfigFlag("device", "--device", "auto, cpu, cuda ..."),
)
