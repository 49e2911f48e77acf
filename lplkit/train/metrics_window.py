"""The logging window: loss sums of the steps since the last log line, and the skip-streak rule.

A step's micro-batch losses are added to a pending step (`add`); `end_step` folds them into the
window when the step's update was applied, or counts the step as skipped when its gradient norm was
non-finite (its losses are left out of the log). `close` turns the window into one `metrics.jsonl`
record, summed over ranks:

  loss_diffusion = sum_i L_diff,i / N,   loss_lpl = sum_i L_lpl,i / N,   gate_frac = gated / N,
  loss = loss_diffusion + w_lpl * loss_lpl                 (N = samples of the applied steps)

Skip-streak rule (`diverged`): a window whose steps were all skipped stops the run once
`MIN_SKIP_STREAK` steps in a row were skipped, or when the run ends having skipped every step since
this process started it. An occasional non-finite step is survivable; a streak means the run
diverged or its inputs are broken.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lplkit.distributed import DistInfo, all_reduce_sum
from lplkit.train.losses import LossParts

MIN_SKIP_STREAK = 8
# Window sums over the samples of the applied steps since the last log line (state.pt `log_acc`).
SUMS = ("diff_sum", "lpl_sum", "gated", "samples")


class MetricsWindow:
    """Loss sums, skip counts and timing of the current logging window (every rank keeps its own
    sums; `close` all-reduces them).

    Args:
        every: log every `every` steps (and at the last step).
        lpl_weight: w_lpl of the logged total loss.
        device: where the sums live (the training device: adding to them never syncs the host).
        dist: the ranks `close` sums over.
    """

    def __init__(
        self, *, every: int, lpl_weight: float, device: torch.device, dist: DistInfo
    ) -> None:
        self.every = every
        self.lpl_weight = lpl_weight
        self.device = device
        self.dist = dist
        self.nan_skips = 0  # steps skipped over the whole run (checkpointed)
        self.sums = self._zeros()
        self._pending = self._zeros()
        self.begin(0)

    def _zeros(self) -> dict[str, torch.Tensor]:
        return {k: torch.zeros((), dtype=torch.float64, device=self.device) for k in SUMS}

    # ------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The window's sums (state.pt `log_acc`): a resumed run logs the same numbers."""
        return {k: v.detach().cpu() for k, v in self.sums.items()}

    def load_state_dict(self, sums: dict[str, torch.Tensor], nan_skips: int) -> None:
        self.sums = {k: v.to(self.device) for k, v in sums.items()}
        self.nan_skips = nan_skips

    def begin(self, step: int) -> None:
        """Start counting at `step` (the run's first step in this process): the skip-streak rule
        and the timing look at the steps from here on."""
        self._first_step, self._skips_at_first = step, self.nan_skips
        self._start_step, self._skips_at_start = step, self.nan_skips
        self.streak = 0  # steps skipped in a row
        self._t0, self._images = time.perf_counter(), 0

    # ------------------------------------------------------------------------------- steps
    def add(self, parts: LossParts) -> None:
        """One micro-batch's per-sample losses, pending until `end_step`."""
        self._pending["diff_sum"] += parts.diffusion.double().sum()
        self._pending["lpl_sum"] += parts.lpl.double().sum()
        self._pending["gated"] += parts.gated.double().sum()
        self._pending["samples"] += parts.diffusion.shape[0]

    def end_step(self, *, applied: bool, images: int) -> None:
        """Close the pending step: its losses join the window when its update was `applied`; a
        skipped step is counted instead. `images`: the global batch (for img/s)."""
        if applied:
            for k in SUMS:
                self.sums[k] += self._pending[k]
            self.streak = 0
        else:
            self.nan_skips += 1
            self.streak += 1
        self._pending = self._zeros()
        self._images += images

    # ------------------------------------------------------------------------------- log
    def due(self, step: int, done: bool) -> bool:
        return step % self.every == 0 or done

    def diverged(self, step: int, done: bool) -> str | None:
        """Why the run must stop after the window ending at `step` (the skip-streak rule), or
        None."""
        all_skipped = self.nan_skips - self._skips_at_start == step - self._start_step
        whole_run = self.nan_skips - self._skips_at_first == step - self._first_step
        if all_skipped and (self.streak >= MIN_SKIP_STREAK or (done and whole_run)):
            return (
                f"every step of {self._start_step + 1}..{step} was skipped for a non-finite "
                "gradient norm: the run diverged or its inputs are broken (check `lplkit verify` "
                "on the store, the normalization in run.json, --lr); the last checkpoint is kept, "
                "nothing more is saved"
            )
        return None

    def close(self, *, step: int, images_seen: int, epoch: int, lr: float) -> dict[str, Any]:
        """The window's `metrics.jsonl` record (sums over every rank); starts the next window."""
        acc = {k: all_reduce_sum(v.clone(), self.dist) for k, v in self.sums.items()}
        n = max(acc["samples"].item(), 1.0)
        diff, lpl = acc["diff_sum"].item() / n, acc["lpl_sum"].item() / n
        elapsed = time.perf_counter() - self._t0
        record = {
            "step": step,
            "images_seen": images_seen,
            "epoch": epoch,
            "loss": diff + self.lpl_weight * lpl,
            "loss_diffusion": diff,
            "loss_lpl": lpl,
            "gate_frac": acc["gated"].item() / n,
            "lr": lr,
            "nan_skips": self.nan_skips,
            "img_per_s": self._images / elapsed if elapsed > 0 else 0.0,
            "time_s": elapsed,
        }
        self.sums = self._zeros()
        self._start_step, self._skips_at_start = step, self.nan_skips
        self._t0, self._images = time.perf_counter(), 0
        return record
