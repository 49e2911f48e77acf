"""Run metrics: `metrics.jsonl` (one JSON object per log step) and TensorBoard when installed.

On resume the log is truncated to the records with `step <= resumed step`, so a run that was
killed and resumed ends with the same `metrics.jsonl` as an uninterrupted one (timing fields aside).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Fields that depend on wall-clock time, not on the computation (excluded from determinism checks).
TIMING_FIELDS: frozenset[str] = frozenset({"time_s", "img_per_s", "step_time_s", "eta_s"})


class MetricsLog:
    """Append-only JSON-lines log with an optional TensorBoard mirror (rank 0 only)."""

    def __init__(self, path: Path, *, resume_step: int, tensorboard: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate(resume_step)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(
                    log_dir=str(path.parent / "tb"), purge_step=resume_step + 1
                )
            except ImportError:  # tensorboard is optional
                self._tb = None

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
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl`."""
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
