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
`RESUMABLE_CHANGES` (run length, cadence, device, the store's path) is refused rather than silently
mixed; the store may move but its content must stay (`check_resume_store`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lplkit import __version__
from lplkit.config import to_dict
from lplkit.distributed import barrier, broadcast_object, init_distributed, shutdown
from lplkit.errors import ConfigError
from lplkit.preemption import stop_signals
from lplkit.stats.storage import store_content_hash
from lplkit.train.builders import build_components
from lplkit.train.config import TrainConfig
from lplkit.train.loop import Trainer
from lplkit.train.run_dir import (  # noqa: F401  (load_run, RUN_LOCK_FILE: kept importable here)
    RUN_FORMAT,
    RUN_LOCK_FILE,
    check_normalization,
    check_resume_config,
    check_resume_store,
    load_run,
    lock_run_dir,
    read_json_object,
    run_id_of,
)
from lplkit.validation import require_valid


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

    if not cfg.store or not cfg.out:
        raise ConfigError("both --store and --out are required")
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a run directory; choose another --out")
    created = not run_dir.exists()
    # From here to the end of the teardown a SIGTERM/SIGUSR1 is recorded, not fatal: the loop stops
    # at its next step boundary, and a signal torchrun sends while this rank tears down after a
    # preemption cannot cut the lock release short.
    with stop_signals():
        return _train(cfg, run_dir, created, on_log, on_step, on_start)


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    created: bool,
    on_log: Callable[[dict[str, Any]], None] | None,
    on_step: Callable[[int], None] | None,
    on_start: Callable[[dict[str, Any]], None] | None,
):
    dist = init_distributed(cfg.device)
    lock = None
    try:
        if dist.is_main:
            lock = lock_run_dir(run_dir)
        resuming = check_resume_config(run_dir, cfg)
        saved = run_dir / "run.json"
        # A resumed run keeps its latent normalization even if `lplkit stats` ran on the store since.
        norm, old = None, None
        if resuming and saved.is_file():
            old = require_valid(read_json_object(saved), "run", what=str(saved), error=ConfigError,
                                fix="restore it, or use a new --out")  # fmt: skip
            norm = old["normalization"]
        parts = build_components(cfg, dist.device, normalization=norm)
        content_hash = store_content_hash(cfg.store, parts.store.manifest)
        if old is not None:
            check_resume_store(run_dir, old, cfg.store, content_hash)
        n = parts.normalizer
        check_normalization(cfg, n.shift, n.scale, n.source)
        # The run id (kept from an earlier start's run.json) is rank 0's, known before anything is
        # written: the trainer's checkpointer records it and resumes only its own checkpoints.
        run_id = broadcast_object(run_id_of(run_dir) if dist.is_main else "", dist)
        trainer = Trainer(cfg, parts, run_dir, dist, run_id=run_id, on_log=on_log, on_step=on_step)
        if dist.is_main:
            (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
            info = {
                "format": RUN_FORMAT,
                "lplkit_version": __version__,
                "run_id": run_id,
                "model": parts.model_spec,
                "num_classes": parts.num_classes,
                "latent_shape": list(parts.latent_shape),
                "objective": to_dict(cfg.objective),
                "normalization": {
                    "shift": list(parts.normalizer.shift),
                    "scale": list(parts.normalizer.scale),
                    "source": parts.normalizer.source,
                },
                "store": {
                    "url": cfg.store,
                    "autoencoder": parts.store.manifest.get("autoencoder"),
                    "content_hash": content_hash,
                },
                "world_size": dist.world_size,
                "init": parts.init,
                "text_encoders": parts.text_record,
            }
            if parts.buckets:  # `lplkit sample --size` picks one of these
                info["buckets"] = parts.buckets
            (run_dir / "run.json").write_text(json.dumps(info, indent=2, default=str))
        barrier(dist)
        if on_start is not None and dist.is_main:
            on_start(
                {
                    "world_size": dist.world_size,
                    "device": str(dist.device),
                    "normalization": asdict(parts.normalizer),
                }
            )
        return trainer.run()
    finally:
        if lock is not None:
            lock.release()
            if created:
                with contextlib.suppress(OSError):  # only while empty: a refused start
                    run_dir.rmdir()
        shutdown(dist)
