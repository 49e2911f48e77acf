"""Atomic, verifiable, rotating training checkpoints.

Layout: `RUN_DIR/checkpoints/step_{step:08d}/` holding
  - `model.safetensors` : the trained weights
  - `ema.safetensors`   : the EMA weights
  - `state.pt`          : plain tensors/dicts only (loaded with `torch.load(weights_only=True)`):
                          optimizer, LR scheduler, EMA counters, step, images seen, NaN-skip count,
                          RNG states, loader position (epoch, batch)
  - `meta.json`         : format version, step, sha256 of each file above (written last)

A checkpoint is written into `.tmp-step_*` next to the final directory, every file fsynced, then
renamed into place (rename is atomic on POSIX) and the parent fsynced: a crash leaves either the
complete checkpoint or a `.tmp-*` leftover that the next run deletes. Loading walks the checkpoints
newest first and falls back, with a warning, past any whose files are missing or fail the checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lplkit.errors import CheckpointError

FORMAT_VERSION = 1
FILES = ("model.safetensors", "ema.safetensors", "state.pt")
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    state: dict


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (tied weights); a contiguous CPU copy has none.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """Complete-looking checkpoint directories under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    root: Path,
    step: int,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    state: dict,
    *,
    keep_last: int,
) -> Path:
    """Write checkpoint `step` atomically under `root`, then delete all but the newest `keep_last`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(_plain(model), tmp / "model.safetensors", metadata={"step": str(step)})
        save_file(_plain(ema), tmp / "ema.safetensors", metadata={"step": str(step)})
        torch.save(state, tmp / "state.pt")
        meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "step": step, "sha256": {}}
        for name in FILES:
            _fsync_file(tmp / name)
            meta["sha256"][name] = _sha256(tmp / name)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _fsync_file(tmp / "meta.json")
        _fsync_dir(tmp)
        if final.exists():  # same step saved again (e.g. final step == a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write checkpoint {final}: {exc}") from exc
    for _, old in checkpoint_dirs(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_partial(root: Path) -> list[Path]:
    """Delete `.tmp-*` leftovers of checkpoints interrupted mid-write; returns what was removed."""
    removed = []
    if root.is_dir():
        for p in root.glob(".tmp-step_*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def load_checkpoint_dir(path: Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify one checkpoint directory; raises `CheckpointError` naming what is wrong."""
    from lplkit.validation import load_json_document

    meta_path = path / "meta.json"
    try:
        text = meta_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{meta_path}: missing or unreadable ({exc})") from None
    meta = load_json_document(
        text, "checkpoint-state", what=str(meta_path), error=CheckpointError,
        fix="the checkpoint is damaged",
    )  # fmt: skip
    for name in FILES:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if _sha256(f) != meta["sha256"].get(name):
            raise CheckpointError(f"{f}: checksum mismatch (corrupt or partially written)")
    try:
        model = load_file(path / "model.safetensors", device=str(map_location))
        ema = load_file(path / "ema.safetensors", device=str(map_location))
        state = torch.load(path / "state.pt", map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be decoded ({exc})") from None
    return Checkpoint(path=path, step=int(meta["step"]), model=model, ema=ema, state=state)


def load_latest(root: Path, *, map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """Newest valid checkpoint under `root` (warning for each invalid newer one), or None."""
    for _, path in reversed(checkpoint_dirs(root)):
        try:
            return load_checkpoint_dir(path, map_location=map_location)
        except CheckpointError as exc:
            warnings.warn(
                f"skipping checkpoint: {exc}; falling back to the previous one", stacklevel=2
            )
    return None
