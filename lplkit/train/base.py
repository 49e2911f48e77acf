"""Pre-trained denoisers to start from: bundled bases (``openmoji-base``) or any lplkit run.

A *base* is what post-training (``lplkit train --init BASE``) and sampling need of a trained
denoiser, laid out like a run directory without its optimizer state:

  run.json            model spec, classes, latent shape, objective, latent normalization and the
                      autoencoder it was trained with (``schemas/run.schema.json``)
  model.safetensors   the (EMA) weights, keys as ``Denoiser.state_dict()``
  training.json       how it was made: command, steps, wall time, versions, final metrics (bundled)

``load_base(spec)`` accepts a bundled name (``BUNDLED_BASES``), a base directory as above, or a run
directory (its newest valid checkpoint; EMA weights unless ``ema=False``). The denoiser keeps the
latent normalization it was trained in: a post-training run must use the same map, not the one of
its own store's statistics, or the first step would see shifted inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lplkit.diffusion.denoisers import Denoiser, build_from_spec
from lplkit.errors import CheckpointError, ConfigError
from lplkit.train.checkpoint import load_latest
from lplkit.train.run_dir import load_run
from lplkit.validation import require_valid

__all__ = ["BUNDLED_BASES", "Base", "base_dir", "load_base"]

#: Bundled short names -> package-relative directories under ``lplkit/assets/`` (docs/base-model.md).
BUNDLED_BASES: dict[str, str] = {
    "openmoji-base": "openmoji-base",
    "openmoji-t2i-base": "openmoji-t2i-base",
}


@dataclass
class Base:
    """A loaded base: the denoiser (eval mode, on CPU) and its run record."""

    model: Denoiser
    info: dict[str, Any]  # run.json
    source: str  # what was loaded: a directory or "bundled:NAME"
    step: int | None  # training step of the weights when known

    @property
    def normalization(self) -> dict[str, Any]:
        """``{"shift": [...], "scale": [...], "source": ...}`` the weights were trained with."""
        return dict(self.info["normalization"])


def base_dir(name: str) -> Path:
    """The package directory of the bundled base ``name``."""
    if name not in BUNDLED_BASES:
        raise ConfigError(
            f"unknown bundled base {name!r}; choose one of: {', '.join(sorted(BUNDLED_BASES))}, "
            "or pass a run directory"
        )
    path = Path(str(resources.files("lplkit") / "assets" / BUNDLED_BASES[name]))
    if not (path / "model.safetensors").is_file():
        raise ConfigError(f"bundled base {name!r} is missing its files at {path}; reinstall lplkit")
    return path


def _read_info(path: Path) -> dict[str, Any]:

    try:
        info = json.loads((path / "run.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path / 'run.json'} cannot be read ({exc})") from None
    require_valid(info, "run", what=str(path / "run.json"), error=ConfigError,
                  fix="point --init at an lplkit run or base directory")  # fmt: skip
    return info


def _build(info: dict[str, Any]) -> Denoiser:
    return build_from_spec(info["model"])


def load_run_model(run_dir: Path, *, ema: bool = True) -> tuple[Any, dict[str, Any], Denoiser, int]:
    """A run directory's config, its run.json and its newest valid checkpoint's weights (EMA unless
    ``ema=False``) in a built model: ``(TrainConfig, info, model, step)``."""

    tcfg, info = load_run(run_dir)
    found = load_latest(run_dir / "checkpoints")
    if found is None:
        raise CheckpointError(f"{run_dir}/checkpoints holds no valid checkpoint; train first")
    model = _build(info)
    model.load_state_dict(found.ema if ema else found.model)
    return tcfg, info, model, found.step


def load_base(spec: str, *, ema: bool = True) -> Base:
    """Load a bundled base, a base directory or a run directory's newest checkpoint (see module)."""
    from safetensors.torch import load_file

    if spec in BUNDLED_BASES:
        path, source = base_dir(spec), f"bundled:{spec}"
    else:
        path, source = Path(spec), str(Path(spec).resolve())
    if not path.is_dir():
        raise ConfigError(
            f"--init {spec!r} is neither a bundled base ({', '.join(sorted(BUNDLED_BASES))}) "
            "nor a directory"
        )
    info = _read_info(path)
    model = _build(info)
    step: int | None = None
    if (path / "model.safetensors").is_file():
        weights = load_file(str(path / "model.safetensors"))
        step = info.get("step")
    else:
        found = load_latest(path / "checkpoints")
        if found is None:
            raise ConfigError(f"{path} holds no valid checkpoint to start from")
        weights = found.ema if ema else found.model
        step = found.step
    weights = {k: v.float() for k, v in weights.items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{spec}: weights do not fit {info['model']['name']} ({first})") from None
    return Base(model=model.eval(), info=info, source=source, step=step)


def export_base(
    run_dir: Path, out: Path, *, record: dict[str, Any], ema: bool = True, half: bool = True
) -> Path:
    """Write ``out/`` (run.json, model.safetensors, training.json) from a run's newest checkpoint.

    ``half`` stores float16 weights (half the package size; loaded back as float32)."""
    from safetensors.torch import save_file

    base = load_base(str(run_dir), ema=ema)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
          for k, v in base.model.state_dict().items()}  # fmt: skip
    save_file(sd, str(out / "model.safetensors"))
    (out / "model.safetensors").chmod(0o644)  # a package file: readable by every user
    info = dict(base.info)
    info["step"] = base.step
    (out / "run.json").write_text(json.dumps(info, indent=2, default=str))
    (out / "training.json").write_text(json.dumps(record, indent=2, default=str))
    return out
