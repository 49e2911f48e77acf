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

`Checkpointer` is a run's view of this: its run directory and run id fixed at construction, it
writes (rank 0), rotates only the checkpoints its own run wrote, and resumes from the newest of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lplkit.errors import CheckpointError
from lplkit.validation import load_json_document

FORMAT_VERSION = 1
FILES = ("model.safetensors", "ema.safetensors", "state.pt")
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_MAX_META_BYTES = 1 << 20  # a meta.json is ~400 bytes


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    state: dict
    run_id: str | None = None  # the run that wrote it (None: an lplkit from before run ids)


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


def _is_ours(path: Path, run_id: str) -> bool:
    """Whether `path` is a checkpoint this run wrote (a readable meta.json records `run_id`)."""
    try:
        raw = (path / "meta.json").read_bytes()
        if len(raw) > _MAX_META_BYTES:
            return False
        meta = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("run_id") == run_id


def _write_failed(final: Path, tmp: Path, exc: BaseException) -> CheckpointError:
    """One line for a failed write (torch.save reports ENOSPC as a RuntimeError without errno)."""
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        free = f"{shutil.disk_usage(final.parent).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return CheckpointError(
        f"could not write checkpoint {final} ({type(exc).__name__}: {detail}; {free}); the "
        "partial checkpoint was removed: free disk space (or fix the storage) and re-run the "
        "same command, which resumes from the last complete checkpoint"
    )


def save_checkpoint(
    root: Path,
    step: int,
    model: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    state: dict,
    *,
    keep_last: int,
    run_id: str,
) -> Path:
    """Write checkpoint `step` atomically under `root`, recording `run_id` in its meta.json, then
    delete this run's older checkpoints beyond the newest `keep_last`.

    Only checkpoints whose meta.json records the same `run_id` are ever deleted; the checkpoint
    just written is always kept. A directory of the same step that is not this run's is moved
    aside (`step_X.replaced-<ns>`), never deleted.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(_plain(model), tmp / "model.safetensors", metadata={"step": str(step)})
        save_file(_plain(ema), tmp / "ema.safetensors", metadata={"step": str(step)})
        torch.save(state, tmp / "state.pt")
        meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "step": step, "sha256": {}}
        meta["run_id"] = run_id
        for name in FILES:
            _fsync_file(tmp / name)
            meta["sha256"][name] = _sha256(tmp / name)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        _fsync_file(tmp / "meta.json")
        _fsync_dir(tmp)
    except Exception as exc:  # OSError, and torch.save's RuntimeError on a full disk
        raise _write_failed(final, tmp, exc) from exc
    try:
        if final.exists():  # same step saved again (e.g. after falling back past a damaged one)
            if _is_ours(final, run_id):
                shutil.rmtree(final)
            else:
                aside = root / f"{final.name}.replaced-{time.time_ns()}"
                os.rename(final, aside)
                warnings.warn(
                    f"{final} was not written by this run (no matching run id); kept as {aside}",
                    stacklevel=2,
                )
        os.rename(tmp, final)
        _fsync_dir(root)
    except OSError as exc:
        raise _write_failed(final, tmp, exc) from exc
    ours = [p for _, p in checkpoint_dirs(root) if p != final and _is_ours(p, run_id)]
    for old in ours[: max(0, len(ours) + 1 - keep_last)]:
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

    meta_path = path / "meta.json"
    try:
        text = meta_path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{meta_path}: missing or unreadable ({exc})") from None
    if len(text) > _MAX_META_BYTES:
        raise CheckpointError(f"{meta_path}: {len(text)} bytes, not a checkpoint's meta.json")
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
    return Checkpoint(
        path=path, step=int(meta["step"]), model=model, ema=ema, state=state,
        run_id=meta.get("run_id"),
    )  # fmt: skip


def load_latest(
    root: Path, *, map_location: str | torch.device = "cpu", run_id: str | None = None
) -> Checkpoint | None:
    """Newest valid checkpoint under `root` (warning for each invalid newer one), or None.

    Without `run_id` any run's checkpoint is taken (the weights of a finished run: sample, export,
    --init). With `run_id` (a resume), a checkpoint recording another run id is skipped with a
    warning; one recording none, written by an lplkit from before run ids (2026-11-30, also before
    the fp16 scaler state), is refused: it cannot be resumed exactly.
    """
    for _, path in reversed(checkpoint_dirs(root)):
        try:
            found = load_checkpoint_dir(path, map_location=map_location)
        except CheckpointError as exc:
            warnings.warn(
                f"skipping checkpoint: {exc}; falling back to the previous one", stacklevel=2
            )
            continue
        recorded = found.run_id
        if run_id is not None and recorded is None:
            raise CheckpointError(
                f"{path} was written by an lplkit from before run ids (its meta.json records "
                f"none) and cannot be resumed; start a new run from its weights with "
                f"`lplkit train --init {root.parent} --out NEW_DIR`"
            )
        if run_id is not None and recorded != run_id:
            warnings.warn(
                f"skipping checkpoint {path}: written by another run (run id {recorded}, this "
                f"run is {run_id}); falling back to the previous one",
                stacklevel=2,
            )
            continue
        return found
    return None


class Checkpointer:
    """One run's checkpoints, under `RUN_DIR/checkpoints`.

    Written every `every` steps and at the last step (rank 0 writes, every rank records the step as
    saved), recording `run_id`; rotation keeps this run's newest `keep_last` and never touches
    another run's. `load_latest` resumes from this run's newest valid checkpoint.

    Args:
        run_dir: the run directory.
        run_id: the run's id (`run.json` `run_id`: 32 hex digits).
        every: checkpoint cadence in steps.
        keep_last: how many of this run's checkpoints rotation keeps.
        is_main: this process writes the files (rank 0).
    """

    def __init__(
        self, run_dir: Path, run_id: str, *, every: int, keep_last: int, is_main: bool = True
    ) -> None:
        if not re.fullmatch(r"[0-9a-f]{32}", run_id):
            raise ValueError(f"run id {run_id!r} is not 32 hex digits")
        self.root = Path(run_dir) / "checkpoints"
        self.run_id = run_id
        self.every = every
        self.keep_last = keep_last
        self.is_main = is_main
        self.saved_step: int | None = None  # step of the newest checkpoint written or resumed

    def due(self, step: int, done: bool) -> bool:
        return step % self.every == 0 or done

    def save(
        self,
        step: int,
        contents: Callable[[], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]],
    ) -> Path | None:
        """Checkpoint `step`: rank 0 writes `contents()` = (model weights, EMA weights, state)."""
        self.saved_step = step
        if not self.is_main:
            return None
        model, ema, state = contents()
        return save_checkpoint(self.root, step, model, ema, state, keep_last=self.keep_last,
                               run_id=self.run_id)  # fmt: skip

    def load_latest(self, *, map_location: str | torch.device = "cpu") -> Checkpoint | None:
        """This run's newest valid checkpoint (rank 0 first removes partial writes), or None."""
        if self.is_main:
            remove_partial(self.root)
        found = load_latest(self.root, map_location=map_location, run_id=self.run_id)
        if found is not None:
            self.saved_step = found.step
        return found
