"""Typed training configuration (`TrainConfig`), loaded with `lplkit.config.load_config`.

Precedence: dataclass defaults <- `--config FILE` (TOML, e.g. `pipelines/*.toml`) <- `--set a.b=v`
<- explicit CLI flags. The resolved config is written to `RUN_DIR/config.json`; a re-run of the same
command resumes and refuses a config that changes anything but the run length and logging cadence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lplkit.config import (
    MAX_BATCH,
    MAX_SAMPLER_STEPS,
    ConfigFlag,
    check_ranges,
    fields_from_dict,
    ranged,
)
from lplkit.errors import ConfigError
from lplkit.lpl.config import LPL_PRESETS, LPLConfig, lpl_options, resolve_lpl_config

ObjectiveKind = Literal["eps", "v", "flow"]  # the class is lplkit.diffusion.objectives.Objective


@dataclass
class ObjectiveConfig:
    """Which diffusion objective; schedule options for DDPM, time sampling for flow matching."""

    kind: ObjectiveKind = "flow"
    schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    num_train_timesteps: int = ranged(1000, ge=2, le=1_000_000)
    time_sampling: Literal["uniform", "logit-normal"] = "logit-normal"


@dataclass
class ModelConfig:
    """Denoiser from the `lplkit.diffusion.denoisers` registry; `label_dropout` is the CFG null-label
    rate. A text-to-image model (PixArt-*, MMDiT-*, UNetText-*) reads the store's cached
    `text_encoder`s (several combine as SD3 does, `lplkit.diffusion.text_conditioning`; empty = the
    store's only one) and replaces a `caption_dropout` share of rows by the empty caption."""

    name: str = "DiT-S/2"
    label_dropout: float = ranged(0.1, ge=0.0, lt=1.0)
    text_encoder: list[str] = field(default_factory=list)
    caption_dropout: float = ranged(0.1, ge=0.0, lt=1.0)


@dataclass
class OptimConfig:
    """AdamW, linear warm-up then a constant, cosine or linear-decay LR (`lplkit.train.lr_schedule`),
    global-norm gradient clipping."""

    lr: float = ranged(1e-4, gt=0.0)
    betas: tuple[float, float] = ranged((0.9, 0.999), ge=0.0, lt=1.0)
    weight_decay: float = ranged(0.0, ge=0.0)
    eps: float = ranged(1e-8, ge=0.0)
    warmup_steps: int = ranged(0, ge=0)
    grad_clip: float = ranged(1.0)  # <= 0 disables clipping
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = ranged(0.0, ge=0.0, le=1.0)  # cosine / linear: final LR / lr
    decay_steps: int | None = ranged(None, ge=1)  # step the decay ends; None = the run's `steps`


@dataclass
class LplTermConfig:
    """Latent Perceptual Loss: total = L_diff + weight * mean_over_batch(LPL * gate).

    A sample is gated in when SNR(t) >= snr_min (if set) and, for DDPM, t < max_timestep (if set).
    A table that sets `max_timestep` but not `snr_min` means `t < max_timestep` alone.
    Ungated samples contribute 0 and are never decoded; the mean divides by the full batch size.

    `loss` holds the options of `LatentPerceptualLoss` (`lplkit.lpl.config.LPLConfig`), resolved
    as `preset` <- the explicit keys of the `[lpl.loss]` table (TOML, `--set lpl.loss.KEY=`,
    `--lpl-norm`, ...).
    """

    enabled: bool = False
    preset: str = "paper"
    weight: float = ranged(1.0, ge=0.0)
    snr_min: float | None = ranged(3.0, ge=0.0)
    max_timestep: int | None = ranged(None, ge=1)
    start_step: int = ranged(0, ge=0)
    # Per-sample weight of the LPL by an SNR function: "min-snr" = the Min-SNR-gamma weight of the
    # objective's own MSE (diffusers' LPL trainer: --lpl_scale with --snr_gamma); "none" = 1.
    snr_weighting: Literal["none", "min-snr"] = "none"
    snr_gamma: float = ranged(5.0, gt=0.0)
    vae: str | None = None  # override the autoencoder recorded in the store manifest
    vae_subfolder: str | None = None
    loss: LPLConfig | None = None  # None = the preset's options

    def __post_init__(self) -> None:
        if self.loss is None:
            self.loss = resolve_lpl_config(self.preset)

    @classmethod
    def from_table(cls, data: dict[str, Any], prefix: str = "") -> LplTermConfig:
        """Build from a TOML/JSON table: the gate/schedule keys as typed fields, then
        `loss = resolve_lpl_config(preset, **explicit loss keys)` (preset first, keys override)."""

        if not isinstance(data, dict):
            raise ConfigError(f"{prefix.rstrip('.') or 'lpl'}: expected a table, got {data!r}")
        data = dict(data)
        loss = data.pop("loss", None) or {}
        if isinstance(loss, LPLConfig):
            loss = loss.to_dict()
        if not isinstance(loss, dict):
            raise ConfigError(f"{prefix}loss: expected a table of LPL options, got {loss!r}")
        loss = dict(loss)
        out = fields_from_dict(cls, data, prefix)
        if out.max_timestep is not None and "snr_min" not in data:
            # The reference code gates DDPM by t < max_timestep alone: a max timestep without an
            # explicit SNR threshold replaces the default SNR gate instead of AND-ing with it,
            # however the table was written (TOML, --set, flags, a saved config.json).
            out.snr_min = None
        out.loss = resolve_lpl_config(out.preset, **lpl_options(loss, f"{prefix}loss."))
        return out


@dataclass
class CheckpointConfig:
    every: int = ranged(1000, ge=1)
    keep_last: int = ranged(3, ge=1)


@dataclass
class LogConfig:
    every: int = ranged(50, ge=1)
    sample_every: int = ranged(0, ge=0)  # 0 = never; else PNG grids decoded with the AE
    sample_n: int = ranged(16, ge=1, le=MAX_BATCH)
    sample_steps: int = ranged(32, ge=1, le=MAX_SAMPLER_STEPS)
    tensorboard: bool = True  # RUN_DIR/tb/ when tensorboard is installed (a notice when not)
    wandb: bool = False  # Weights & Biases (`pip install 'lplkit[wandb]'`; WANDB_MODE=offline)
    wandb_project: str = "lplkit"


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    store: str = ""
    out: str = ""
    seed: int = ranged(0, ge=0)
    steps: int = ranged(10000, ge=0)
    batch_size: int = ranged(32, ge=1, le=MAX_BATCH)  # global batch (all ranks, micro-steps)
    grad_accum: int = ranged(1, ge=1, le=MAX_BATCH)
    ema_decay: float = ranged(0.9999, ge=0.0, lt=1.0)
    ema_warmup: bool = True  # decay_k = min(decay, (1 + k) / (10 + k))
    bf16: bool = False
    fp16: bool = False  # fp16 autocast with a gradient scaler (GPUs without bf16)
    compile: bool = False
    device: str = "auto"
    # Full store verification (checksums, NaN) at start; the quick structural check always runs.
    verify_store: bool = False
    # Start from pre-trained weights (bundled base such as "openmoji-base", or a run directory's
    # newest EMA weights) instead of a random init; the run keeps the base's latent normalization.
    init: str | None = None
    # hub branch, tag or commit of a diffusers `--init org/name` (the resolved commit goes to run.json)
    init_revision: str | None = None
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lpl: LplTermConfig = field(default_factory=LplTermConfig)
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        """Reject values that would fail later in a less readable way: each field against its
        declared range (`ranged`), then the checks that involve several fields."""
        check_ranges(self)
        for name in ("objective", "model", "optim", "lpl", "ckpt", "log"):
            check_ranges(getattr(self, name), f"{name}.")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}"
            )
        o = self.optim
        if (
            o.schedule != "constant"
            and o.decay_steps is not None
            and o.decay_steps <= o.warmup_steps
        ):
            raise ConfigError(
                f"optim.decay_steps ({o.decay_steps}) must be > optim.warmup_steps "
                f"({o.warmup_steps}): the {o.schedule} decay follows the warm-up"
            )
        if self.bf16 and self.fp16:
            raise ConfigError("bf16 and fp16 are exclusive; choose one mixed precision")
        if self.lpl.max_timestep is not None and self.objective.kind == "flow":
            raise ConfigError(
                "lpl.max_timestep is a DDPM gate; use lpl.snr_min with --objective flow"
            )

    def per_rank_micro_batch(self, world_size: int) -> int:
        """Samples per rank per accumulation micro-step: batch_size / (world_size * grad_accum)."""
        denom = world_size * self.grad_accum
        if self.batch_size % denom:
            raise ConfigError(
                f"batch_size {self.batch_size} is not divisible by world_size*grad_accum = {denom}"
            )
        return self.batch_size // denom


# Keys a resumed run may change (run length, cadence, device, how the same math runs); anything
# else must match config.json. Dotted keys name one nested field.
RESUMABLE_CHANGES: frozenset[str] = frozenset(
    {"steps", "device", "compile", "ckpt", "log", "out", "store", "verify_store"}
    | {"lpl.loss.compile", "lpl.loss.channels_last"}
)


# Every `lplkit train` flag that sets a TrainConfig field, declared once: the typer signature
# (lplkit.cli.options), the overrides table and the docs' flag list all come from these rows.
TRAIN_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("store", "--store", "Latent store (lplkit encode)."),
    ConfigFlag("out", "--out", "Run directory (re-run = resume)."),
    ConfigFlag("lpl.enabled", "--lpl/--no-lpl", "Add the gated LPL term."),
    ConfigFlag("objective.kind", "--objective", "eps, v or flow."),
    ConfigFlag("model.name", "--model", "Denoiser, e.g. DiT-S/2, PixArt-S/2, MMDiT-S/2."),
    ConfigFlag(
        "model.text_encoder",
        "--text-encoder",
        "Cached text encoder(s) a text model reads (store names; repeat or comma-separate, "
        "combined as SD3 does). Default: the store's only one.",
        repeat=True,
    ),
    ConfigFlag(
        "model.caption_dropout",
        "--caption-dropout",
        "Share of rows trained on the empty caption (classifier-free guidance).",
    ),
    ConfigFlag("steps", "--steps", "Total optimizer steps."),
    ConfigFlag("batch_size", "--batch-size", "Global batch (all ranks and accumulation steps)."),
    ConfigFlag("optim.lr", "--lr", "AdamW learning rate."),
    ConfigFlag("optim.warmup_steps", "--warmup", "Linear LR warmup steps."),
    ConfigFlag(
        "optim.schedule", "--lr-schedule", "After warm-up: constant, cosine or linear decay."
    ),
    ConfigFlag("seed", "--seed", "Seed of every random draw."),
    ConfigFlag(
        "init",
        "--init",
        "Start from pre-trained weights: a bundled base (openmoji-base), a run directory, or a "
        "diffusers DiTPipeline (hub id, local directory, SPEC:transformer).",
    ),
    ConfigFlag("init_revision", "--init-revision", "Hub branch, tag or commit of --init ORG/NAME."),
    ConfigFlag("lpl.preset", "--lpl-preset", f"LPL options preset: {', '.join(LPL_PRESETS)}."),
    ConfigFlag("lpl.weight", "--lpl-weight", "w in L + w LPL."),
    ConfigFlag("lpl.snr_min", "--lpl-snr-min", "Gate: LPL only where SNR(t) >= this."),
    ConfigFlag(
        "lpl.max_timestep",
        "--lpl-max-timestep",
        "DDPM gate t < T (replaces the SNR gate if alone).",
    ),
    ConfigFlag("lpl.start_step", "--lpl-start", "Step the LPL starts."),
    ConfigFlag(
        "lpl.snr_weighting",
        "--lpl-snr-weighting",
        "Per-sample LPL weight: none or min-snr (diffusers' --lpl_scale with --snr_gamma).",
    ),
    ConfigFlag("lpl.snr_gamma", "--lpl-snr-gamma", "gamma of --lpl-snr-weighting min-snr."),
    ConfigFlag("lpl.loss.depth", "--lpl-depth", "Decoder up blocks tapped after the mid block."),
    ConfigFlag(
        "lpl.loss.norm",
        "--lpl-norm",
        "Feature normalization: l2, l2-shared, standardize-shared, dataset (lplkit stats), none.",
    ),
    ConfigFlag("lpl.loss.layer_weights", "--lpl-layer-weights", "uniform, pow2 or upsampling."),
    ConfigFlag(
        "lpl.loss.outliers",
        "--lpl-outliers",
        "Outlier mask: true, false, layers (2,3) or layer:down_factor (2:2,3:1).",
    ),
    ConfigFlag(
        "lpl.loss.compile",
        "--lpl-compile/--no-lpl-compile",
        "torch.compile the LPL's decoder taps and loss math (default off: docs/benchmarks.md).",
    ),
    ConfigFlag(
        "lpl.loss.crop",
        "--lpl-crop",
        "Decode a CROP x CROP window of each gated latent instead of the whole latent.",
    ),
    ConfigFlag("lpl.vae", "--vae", "Override the store's autoencoder."),
    ConfigFlag("lpl.vae_subfolder", "--vae-subfolder", "e.g. vae."),
    ConfigFlag("grad_accum", "--grad-accum", "Micro-steps per step."),
    ConfigFlag("bf16", "--bf16/--no-bf16", "bf16 autocast."),
    ConfigFlag("fp16", "--fp16/--no-fp16", "fp16 autocast with a gradient scaler."),
    ConfigFlag("compile", "--compile/--no-compile", "torch.compile."),
    ConfigFlag("ema_decay", "--ema-decay", "EMA decay."),
    ConfigFlag("ckpt.every", "--ckpt-every", "Checkpoint period."),
    ConfigFlag("ckpt.keep_last", "--keep-last", "Checkpoints kept."),
    ConfigFlag("log.every", "--log-every", "metrics.jsonl period."),
    ConfigFlag("log.sample_every", "--sample-every", "PNG sample grid period (0 = never)."),
    ConfigFlag(
        "log.wandb",
        "--wandb/--no-wandb",
        "Log to Weights & Biases (pip install 'lplkit[wandb]'; WANDB_MODE=offline: no network).",
    ),
    ConfigFlag("device", "--device", "auto, cpu, cuda, cuda:1 ..."),
    ConfigFlag(
        "verify_store",
        "--verify-store/--no-verify-store",
        "Fully verify the store first (checksums, NaN); a quick check always runs.",
    ),
)
