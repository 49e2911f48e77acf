"""`train(cfg)`: one call that sets up (or resumes) a run directory and trains.

Run directory:
  config.json          the resolved TrainConfig (flags > --set > --config file > defaults)
  run.json             what sampling needs: model spec, classes, normalization, objective, store
                       (schemas/run.schema.json)
  metrics.jsonl        one JSON object per log step; tb/ when TensorBoard is installed
  checkpoints/         step_XXXXXXXX/ (see lplkit.train.checkpoint)
  samples/             periodic PNG grids from the EMA model
  .lplkit-lock.json    held by the running trainer (a second `lplkit train --out` is refused)
Re-running the same command resumes. A re-run whose config differs in anything but
`RESUMABLE_CHANGES` (run length, cadence, device) is refused rather than silently mixed.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lplkit.config import from_dict, to_dict
from lplkit.errors import ConfigError, RunLockedError, StoreCorruptError
from lplkit.store.lock import StoreLock
from lplkit.train.config import RESUMABLE_CHANGES, TrainConfig

RUN_FORMAT = 1
RUN_LOCK_FILE = ".lplkit-lock.json"  # held by the trainer (rank 0) while it runs


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


def _run_id(run_dir: Path) -> str:
    """The run's id: kept from an earlier start's run.json, else a new one."""
    try:
        old = read_json_object(run_dir / "run.json").get("run_id")
    except (ConfigError, OSError):
        old = None
    if isinstance(old, str) and re.fullmatch(r"[0-9a-f]{32}", old):
        return old
    return uuid.uuid4().hex


def _check_normalization(cfg: TrainConfig, shift: tuple, scale: tuple, source: str) -> None:
    """A NaN/Inf or zero scale (or a non-finite shift) makes every step non-finite: refuse it."""
    import math

    bad = [v for v in (*shift, *scale) if not math.isfinite(v)] + [v for v in scale if v == 0]
    if bad:
        where = "`lplkit stats` statistics" if source == "stats" else "autoencoder factors"
        raise StoreCorruptError(
            f"the latent normalization from the store's {where} is unusable (shift {list(shift)}, "
            f"scale {list(scale)}): every training step would be non-finite; run "
            f"`lplkit verify {cfg.store}`, or re-run `lplkit stats`"
        )


def _lock_run_dir(run_dir: Path) -> StoreLock:
    """Take the run directory's lock (a second trainer on the same --out is refused)."""
    from lplkit.store.sidecar import url_to_fs

    lock = StoreLock(*url_to_fs(str(run_dir)), name=RUN_LOCK_FILE, error=RunLockedError,
                     what="run directory")  # fmt: skip
    lock.acquire()
    return lock


def train(
    cfg: TrainConfig,
    *,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
):
    """Train (or resume) the run `cfg.out`; returns `lplkit.train.loop.TrainResult`.

    Rank 0 holds `RUN_DIR/.lplkit-lock.json` for the whole run. Everything is built and checked
    (store, model, optimizer) before config.json and run.json are written, so a refused start
    leaves nothing behind (a run directory it created is removed again while still empty).
    """
    from lplkit import __version__
    from lplkit.train.builders import build_components
    from lplkit.train.distributed import barrier, init_distributed, shutdown
    from lplkit.train.loop import Trainer

    if not cfg.store or not cfg.out:
        raise ConfigError("both --store and --out are required")
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a run directory; choose another --out")
    created = not run_dir.exists()
    dist = init_distributed(cfg.device)
    lock = None
    try:
        if dist.is_main:
            lock = _lock_run_dir(run_dir)
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
        n = parts.normalizer
        _check_normalization(cfg, n.shift, n.scale, n.source)
        trainer = Trainer(cfg, parts, run_dir, dist, on_log=on_log, on_step=on_step)
        if dist.is_main:
            run_id = _run_id(run_dir)
            (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
            info = {
                "format": RUN_FORMAT,
                "lplkit_version": __version__,
                "run_id": run_id,
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
        trainer.run_id = _run_id(run_dir) if not dist.is_main else run_id
        if on_start is not None and dist.is_main:
            on_start({"world_size": dist.world_size, "device": str(dist.device)})
        return trainer.run()
    finally:
        if lock is not None:
            lock.release()
            if created:
                with contextlib.suppress(OSError):  # only while empty: a refused start
                    run_dir.rmdir()
        shutdown(dist)
