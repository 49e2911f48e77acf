"""`train(cfg)`: one call that sets up (or resumes) a run directory and trains.

Run directory:
  config.json          the resolved TrainConfig (flags > --set > --config file > defaults)
  run.json             what sampling needs: model spec, classes, normalization, objective, store
                       (schemas/run.schema.json)
  metrics.jsonl        one JSON object per log step; tb/ when TensorBoard is installed
  checkpoints/         step_XXXXXXXX/ (see lplkit.train.checkpoint)
  samples/             periodic PNG grids from the EMA model
Re-running the same command resumes. A re-run whose config differs in anything but
`RESUMABLE_CHANGES` (run length, cadence, device) is refused rather than silently mixed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lplkit.config import from_dict, to_dict
from lplkit.errors import ConfigError
from lplkit.train.config import RESUMABLE_CHANGES, TrainConfig

RUN_FORMAT = 1


def _diff_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        if f"{prefix}{k}" in RESUMABLE_CHANGES:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return keys


def read_json_object(path: Path) -> dict[str, Any]:
    """A run directory's JSON file as a dict; `ConfigError` naming the file when it is not one."""
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path} is not valid JSON ({exc}); restore it or use a new --out"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; restore it or use a new --out")
    return data


def check_resume_config(run_dir: Path, cfg: TrainConfig) -> bool:
    """True when `run_dir` already holds a run; raises ConfigError when `cfg` is incompatible."""
    path = run_dir / "config.json"
    if not path.exists():
        return False
    # Through the loader first, so a config.json of an older layout (e.g. `lpl.depth` before
    # `[lpl.loss]`) compares by meaning, not by spelling.
    old = to_dict(from_dict(TrainConfig, read_json_object(path)))
    changed = _diff_keys(old, to_dict(cfg))
    if changed:
        raise ConfigError(
            f"{run_dir} holds a run with a different config ({'; '.join(changed)}); "
            "use a new --out, or the same settings to resume"
        )
    return True


def load_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The config and run.json of an existing run directory."""
    from lplkit.validation import require_valid

    try:
        cfg = from_dict(TrainConfig, read_json_object(run_dir / "config.json"))
        info = read_json_object(run_dir / "run.json")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{run_dir} is not an lplkit run directory ({exc.filename} missing)"
        ) from None
    require_valid(info, "run", what=f"{run_dir / 'run.json'}", error=ConfigError,
                  fix="restore it, or re-run `lplkit train` with the same --out to rewrite it")  # fmt: skip
    return cfg, info


def train(
    cfg: TrainConfig,
    *,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
):
    """Train (or resume) the run `cfg.out`; returns `lplkit.train.loop.TrainResult`."""
    from lplkit import __version__
    from lplkit.train.builders import build_components
    from lplkit.train.distributed import barrier, init_distributed, shutdown
    from lplkit.train.loop import Trainer

    if not cfg.store or not cfg.out:
        raise ConfigError("both --store and --out are required")
    dist = init_distributed(cfg.device)
    try:
        run_dir = Path(cfg.out)
        resuming = check_resume_config(run_dir, cfg)
        saved = run_dir / "run.json"
        # A resumed run keeps its latent normalization even if `lplkit stats` ran on the store since.
        norm = None
        if resuming and saved.is_file():
            from lplkit.validation import require_valid

            info = require_valid(read_json_object(saved), "run", what=str(saved), error=ConfigError,
                                 fix="restore it, or use a new --out")  # fmt: skip
            norm = info["normalization"]
        parts = build_components(cfg, dist.device, normalization=norm)
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
            info = {
                "format": RUN_FORMAT,
                "lplkit_version": __version__,
                "model": parts.extra["model_spec"],
                "num_classes": parts.extra["num_classes"],
                "latent_shape": list(parts.latent_shape),
                "objective": to_dict(cfg.objective),
                "normalization": {
                    "shift": list(parts.normalizer.shift),
                    "scale": list(parts.normalizer.scale),
                    "source": parts.normalizer.source,
                },
                "store": {"url": cfg.store, "autoencoder": parts.store.manifest.get("autoencoder")},
                "world_size": dist.world_size,
                "init": parts.extra.get("init"),
            }
            (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
        barrier(dist)
        trainer = Trainer(cfg, parts, run_dir, dist, on_log=on_log, on_step=on_step)
        if on_start is not None and dist.is_main:
            on_start({"world_size": dist.world_size, "device": str(dist.device)})
        return trainer.run()
    finally:
        shutdown(dist)
