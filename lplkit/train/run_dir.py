"""The run directory's bookkeeping: its files, its lock, and the checks a re-run must pass.

  config.json          the resolved TrainConfig (`load_run`, `check_resume_config`)
  run.json             what sampling needs (schemas/run.schema.json); keeps the run's `run_id`
  .lplkit-lock.json    held by the running trainer (`lock_run_dir`; a second trainer is refused)

Sampling, export and `--init RUN` read a run through this module without importing the trainer
(`lplkit.train.run` is the `train()` entry point that uses it). `resolve_train_config` is the config
`lplkit train` runs with: the run's saved config.json under --config, --set and the flags.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lplkit.config import from_dict, resolve_config, to_dict
from lplkit.errors import ConfigError, RunLockedError, StoreCorruptError
from lplkit.store.lock import StoreLock
from lplkit.store.sidecar import url_to_fs
from lplkit.train.config import RESUMABLE_CHANGES, TRAIN_FLAGS, TrainConfig
from lplkit.validation import require_valid

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
    # Through the loader first, so the saved config compares by meaning (preset-resolved loss
    # options, typed values), not by spelling.
    old = to_dict(from_dict(TrainConfig, read_json_object(path)))
    changed = _diff_keys(old, to_dict(cfg))
    if changed:
        raise ConfigError(
            f"{run_dir} holds a run with a different config ({'; '.join(changed)}); "
            "use a new --out, or the same settings to resume"
        )
    return True


def check_resume_store(run_dir: Path, info: dict[str, Any], url: str, content_hash: str) -> None:
    """A resumed run keeps training on the latents its first steps saw: the store's content hash
    (identity + every shard's checksums) must equal the one in run.json, so a store moved or copied
    to another path resumes, while another store (or this path re-encoded with other content) is
    refused. A run.json from before the hash was recorded must name the same path."""
    recorded = info.get("store")
    old: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    old_url, old_hash = old.get("url"), old.get("content_hash")
    if old_hash == content_hash or (old_hash is None and old_url == url):
        return
    if old_hash is None:
        why = f"its run.json records the path only, and --store {url} is another path"
    else:
        why = f"--store {url} holds other latents (content {content_hash[:12]}, run.json {old_hash[:12]})"
    raise ConfigError(
        f"{run_dir} was trained on the store {old_url}; {why}: a resume cannot change its data; "
        f"use a new --out, or start a new run from its weights with --init {run_dir}"
    )


def load_run(run_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    """The config and run.json of an existing run directory."""

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


def run_id_of(run_dir: Path) -> str:
    """The run's id: kept from an earlier start's run.json, else a new one."""
    try:
        old = read_json_object(run_dir / "run.json").get("run_id")
    except (ConfigError, OSError):
        old = None
    if isinstance(old, str) and re.fullmatch(r"[0-9a-f]{32}", old):
        return old
    return uuid.uuid4().hex


def check_normalization(cfg: TrainConfig, shift: tuple, scale: tuple, source: str) -> None:
    """A NaN/Inf or zero scale (or a non-finite shift) makes every step non-finite: refuse it."""

    bad = [v for v in (*shift, *scale) if not math.isfinite(v)] + [v for v in scale if v == 0]
    if bad:
        where = "`lplkit stats` statistics" if source == "stats" else "autoencoder factors"
        raise StoreCorruptError(
            f"the latent normalization from the store's {where} is unusable (shift {list(shift)}, "
            f"scale {list(scale)}): every training step would be non-finite; run "
            f"`lplkit verify {cfg.store}`, or re-run `lplkit stats`"
        )


def lock_run_dir(run_dir: Path) -> StoreLock:
    """Take the run directory's lock (a second trainer on the same --out is refused)."""

    lock = StoreLock(*url_to_fs(str(run_dir)), name=RUN_LOCK_FILE, error=RunLockedError,
                     what="run directory")  # fmt: skip
    lock.acquire()
    return lock


def resolve_train_config(
    config: str | Path | None, overrides: list[str], values: Mapping[str, Any]
) -> TrainConfig:
    """The config `lplkit train` runs with: defaults <- the run's saved config.json (when resuming
    RUN_DIR = the `out` value) <- TOML `config` <- `--set` `overrides` <- the flags' `values`
    (`{param: value}` of `TRAIN_FLAGS`; `lplkit.config.flag_values` reads them from argv)."""
    out = values.get("out")
    saved = Path(out) / "config.json" if out else None
    base = read_json_object(saved) if saved and saved.is_file() else None
    return resolve_config(
        TrainConfig, TRAIN_FLAGS, values, config=config, overrides=overrides, base=base
    )
