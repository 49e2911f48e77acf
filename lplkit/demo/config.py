"""`DemoConfig`: the settings of `lplkit demo` (`lplkit.demo.run_demo`), and its flags (`DEMO_FLAGS`).

Torch-free, so that `lplkit demo --help` is built from it without importing the stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lplkit.config import MAX_BATCH, MAX_SAMPLER_STEPS, ConfigFlag, check_ranges, ranged
from lplkit.errors import ConfigError

__all__ = [
    "DEMO_FLAGS",
    "T2I_TEXT_ENCODER",
    "T2I_TEXT_ENCODERS",
    "TASKS",
    "TASK_DEFAULTS",
    "DemoConfig",
]

TASKS = ("class", "t2i")
ARMS = ("baseline", "lpl")  # the two post-training runs: without and with the LPL
#: What `res`, `base` and `model` are when not given, per task: the bundled base of that task.
TASK_DEFAULTS: dict[str, dict[str, object]] = {
    "class": {"res": 64, "base": "openmoji-base", "model": "UNet-S"},
    "t2i": {"res": 32, "base": "openmoji-t2i-base", "model": "UNetText-S"},
}
#: The t2i demo's text encoder and its settings: those of the bundled t2i base's recipe
#: (pipelines/openmoji-t2i/pretrain.toml).
T2I_TEXT_ENCODERS = ["openmoji-clip"]
T2I_TEXT_ENCODER: dict[str, object] = {"text_encoder": T2I_TEXT_ENCODERS, "text_preset": "sd-clip",
                                       "text_max_tokens": 16}  # fmt: skip
_AUTO = "auto"


@dataclass
class DemoConfig:
    """Settings of one demo run; the defaults fit ~4 minutes on 2 CPU cores.

    ``res``, ``base`` and ``model`` left unset (None / "auto") take the task's values
    (`TASK_DEFAULTS`) when the config is built, so a resolved config always holds them."""

    out: str = "demo-out"
    task: str = "class"  # class: class-conditional; t2i: text-to-image from the OpenMoji names
    res: int | None = ranged(None, ge=8, le=8192)
    limit: int | None = ranged(None, ge=1)  # encode only the first N glyphs of each split (CI)
    base: str | None = _AUTO  # pre-trained weights; None = both arms from scratch
    model: str = _AUTO
    prompts: list[str] = field(default_factory=list)  # t2i: the picture's prompts (default: fixed)
    objective: str = "flow"
    steps: int = ranged(60, ge=1)  # post-training steps of each arm
    # the LPL arm adds the LPL in the last fraction of its steps
    lpl_fraction: float = ranged(1.0, ge=0.0, le=1.0)
    lpl_weight: float = ranged(1.0, ge=0.0)
    batch_size: int = ranged(32, ge=1, le=MAX_BATCH)
    lr: float = ranged(1e-4, gt=0.0)
    ema_decay: float = ranged(0.99, ge=0.0, lt=1.0)
    stats_samples: int = ranged(256, ge=1)
    n_samples: int = ranged(64, ge=1, le=MAX_BATCH)
    sample_steps: int = ranged(32, ge=1, le=MAX_SAMPLER_STEPS)
    guidance: float = ranged(2.0, ge=0.0)
    eval_n: int = ranged(256, ge=1)  # reference (train store) images
    swd_dirs: int = ranged(128, ge=1, le=1 << 16)
    seed: int = ranged(0, ge=0)
    device: str = "cpu"

    def __post_init__(self) -> None:
        defaults = TASK_DEFAULTS.get(self.task)
        if defaults is None:  # validate() names the choices
            return
        if self.res is None:
            self.res = int(defaults["res"])  # type: ignore[call-overload]
        if self.base == _AUTO:
            self.base = str(defaults["base"])
        if self.model == _AUTO:
            self.model = str(defaults["model"])

    def validate(self) -> None:
        """Reject settings the stages would only fail on later."""
        if self.task not in TASKS:
            raise ConfigError(f"demo: --task must be one of {', '.join(TASKS)}, got {self.task!r}")
        check_ranges(self, "demo: ")
        if self.objective not in ("flow", "eps", "v"):
            raise ConfigError(f"demo: objective must be flow, eps or v, got {self.objective!r}")
        bundled = {str(d["base"]): (t, int(d["res"])) for t, d in TASK_DEFAULTS.items()}  # type: ignore[call-overload]
        if self.base in bundled:
            task, res = bundled[self.base]
            if task != self.task:
                raise ConfigError(
                    f"demo: --base {self.base} is the {task} demo's base; --task {self.task} "
                    f"needs --base {TASK_DEFAULTS[self.task]['base']}, a {self.task} run or none"
                )
            if self.res != res:
                raise ConfigError(
                    f"demo: the bundled base {self.base} was trained at {res} px; --res {self.res} "
                    "needs --base none"
                )
        if self.task == "class" and self.prompts:
            raise ConfigError("demo: --prompt applies to --task t2i; the class demo samples labels")
        if any(not p.strip() for p in self.prompts):
            raise ConfigError("demo: --prompt must not be empty")

    @property
    def lpl_start(self) -> int:
        """First step of the LPL arm with the LPL term."""
        return self.steps - round(self.lpl_fraction * self.steps)

    @property
    def root(self) -> Path:
        """Where this task's files go: ``out`` (class) or ``out/t2i`` (its stores hold captions)."""
        return Path(self.out) if self.task == "class" else Path(self.out) / self.task

    @property
    def store(self) -> Path:
        """The train split's latent store."""
        return self.root / f"openmoji-{self.res}.zarr"

    @property
    def test_store(self) -> Path:
        """The held-out test split's latent store (the floor)."""
        return self.root / f"openmoji-{self.res}-test.zarr"

    def run_dir(self, arm: str) -> Path:
        """The training run directory of ``arm`` (baseline or lpl)."""
        return self.root / "runs" / arm


DEMO_FLAGS: tuple[ConfigFlag, ...] = (
    ConfigFlag("out", "--out", "Output directory (re-run = resume)."),
    ConfigFlag(
        "task",
        "--task",
        "class (class-conditional, 64 px) or t2i (text-to-image from the glyphs' Unicode names, "
        "32 px, bundled openmoji-clip text encoder).",
    ),
    ConfigFlag("res", "--res", "Image resolution (default: 64 class, 32 t2i)."),
    ConfigFlag("limit", "--limit", "Encode only the first N glyphs of each split (a quick check)."),
    ConfigFlag(
        "base",
        "--base",
        "Pre-trained denoiser both arms start from: a bundled base, a run directory, or none "
        "(from scratch). Default: openmoji-base (class), openmoji-t2i-base (t2i).",
    ),
    ConfigFlag(
        "model",
        "--model",
        "Denoiser (see lplkit.diffusion.denoisers); must match --base. Default: UNet-S (class), "
        "UNetText-S (t2i).",
    ),
    ConfigFlag(
        "prompts",
        "--prompt",
        "t2i: prompts of the side-by-side picture (repeat or comma-separate; default: 8 held-out "
        "glyph names).",
        repeat=True,
    ),
    ConfigFlag("objective", "--objective", "flow, eps or v."),
    ConfigFlag("steps", "--steps", "Post-training steps of each arm."),
    ConfigFlag(
        "lpl_fraction",
        "--lpl-fraction",
        "LPL arm: last fraction of its steps trained with the LPL.",
    ),
    ConfigFlag("lpl_weight", "--lpl-weight", "w in L + w LPL."),
    ConfigFlag("batch_size", "--batch-size", "Training batch."),
    ConfigFlag("lr", "--lr", "Post-training learning rate."),
    ConfigFlag("n_samples", "--n", "Images to sample per arm (grid + eval)."),
    ConfigFlag("sample_steps", "--sample-steps", "Sampler steps."),
    ConfigFlag("guidance", "--cfg", "Classifier-free guidance scale.", aliases=("--guidance",)),
    ConfigFlag("eval_n", "--eval-n", "Reference images for eval."),
    ConfigFlag("swd_dirs", "--swd-dirs", "SWD directions per repeat."),
    ConfigFlag("stats_samples", "--stats-samples", "Items for `stats`."),
    ConfigFlag("seed", "--seed", "Seed of every stage."),
    ConfigFlag("device", "--device", "cpu, cuda ..."),
)
