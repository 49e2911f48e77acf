"""Run metrics: `metrics.jsonl` (one JSON object per log step), mirrored to TensorBoard
(`RUN_DIR/tb/`, when installed; a one-line notice when `log.tensorboard` is on and it is not) and
to Weights & Biases (`log.wandb`, the `wandb` extra; `WANDB_MODE=offline` keeps it off the network).

On resume the log is truncated to the records with `step <= resumed step`, so a run that was
killed and resumed ends with the same `metrics.jsonl` as an uninterrupted one (timing fields aside).
A resumed run continues the same W&B run (its id is kept in `RUN_DIR/wandb-run-id`).
"""

from __future__ import annotations

import json
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

from lplkit.errors import ConfigError

TENSORBOARD_NOTICE = (
    "log.tensorboard is on but tensorboard is not installed: metrics go to metrics.jsonl only "
    "(pip install tensorboard, or --set log.tensorboard=false)"
)

# Fields that depend on wall-clock time, not on the computation (excluded from determinism checks).
TIMING_FIELDS: frozenset[str] = frozenset({"time_s", "img_per_s", "step_time_s", "eta_s"})


class MetricsLog:
    """Append-only JSON-lines log with an optional TensorBoard mirror (rank 0 only)."""

    def __init__(
        self,
        path: Path,
        *,
        resume_step: int,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._wandb = _wandb_run(path.parent, wandb_project, config) if wandb_project else None
        self._truncate(resume_step)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional, but say so: the user asked for it
                warnings.warn(TENSORBOARD_NOTICE, stacklevel=2)
            else:
                self._tb = SummaryWriter(
                    log_dir=str(path.parent / "tb"), purge_step=resume_step + 1
                )

    def _truncate(self, resume_step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut by a crash
                continue
            if rec.get("step", 0) <= resume_step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, record["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _wandb_run(run_dir: Path, project: str, config: dict[str, Any] | None) -> Any:
    """A W&B run logging under `run_dir/wandb/`, resumed by id when the run directory is."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "log.wandb is on but wandb is not installed: pip install 'lplkit[wandb]' "
            "(or --no-wandb)"
        ) from None
    id_file = run_dir / "wandb-run-id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    return wandb.init(project=project, id=run_id, resume="allow", dir=str(run_dir),
                      name=run_dir.name, config=config or {})  # fmt: skip


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl`."""
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
