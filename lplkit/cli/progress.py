"""The one progress line of the CLI: a rich bar on stderr fed by a library callback.

Commands pass `bar.update` (or a lambda around it) as the library's progress callback; the library
never imports rich. A disabled bar (non-zero ranks, `--json`) renders nothing and costs nothing.
When stderr is not a terminal (a SLURM or CI log file, a pipe) the bar becomes plain lines, one every
`log_every` seconds and one at the end: `label: done/total unit (pct%), rate, ETA ...`.
"""

from __future__ import annotations

import time
from typing import Any

from lplkit.cli import output

__all__ = ["LiveProgress"]


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class LiveProgress:
    """`label [bar] done/total  info  ETA` on stderr.

    Args:
        label: what is counted, shown first.
        enabled: False = render nothing (every method is a no-op).
        total: the count at 100%; None = given by the first `update`.
        rate_unit: when set, the info field starts with the measured rate, e.g. ``12.5 img/s``.
        transient: remove the line when done (the command prints its own summary).
        log_every: when stderr is not a terminal, a plain line every this many seconds (and one at
            the end) instead of the bar; None = the bar only (rich draws nothing into a file).
        log_unit: what `done` counts, in those lines (e.g. ``samples``).
    """

    def __init__(
        self,
        label: str,
        *,
        enabled: bool = True,
        total: int | None = None,
        rate_unit: str | None = None,
        transient: bool = False,
        log_every: float | None = None,
        log_unit: str = "",
    ) -> None:
        self.label = label
        self.log_every, self.log_unit = log_every, log_unit
        self._log_t0: float | None = None  # set when logging plain lines instead of a bar
        self._log_last = 0.0
        self._logged_last = False  # the 100% line was written: one end line, however often told
        self.enabled = enabled
        self.total = total
        self.rate_unit = rate_unit
        self.transient = transient
        self._bar: Any = None
        self._task: Any = None
        self._info = ""

    def __enter__(self) -> LiveProgress:
        if self.enabled and self.log_every is not None and not output.console.is_terminal:
            self._log_t0 = self._log_last = time.monotonic()
        elif self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn(self.label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=output.console,
                transient=self.transient,
            )
            self._bar.__enter__()
        return self

    def update(self, done: int, total: int | None = None, info: str | None = None) -> None:
        """`done` of `total` (kept from before when None); `info` replaces the free text."""
        if self._log_t0 is not None:
            self._log_line(done, total, info)
            return
        if self._bar is None:
            return
        if total is not None:
            self.total = total
        if info is not None:
            self._info = info
        if self._task is None:
            self._task = self._bar.add_task(self.label, total=self.total, info=self._info)
        self._bar.update(self._task, completed=done, total=self.total, info=self._text())

    def _log_line(self, done: int, total: int | None, info: str | None) -> None:
        if total is not None:
            self.total = total
        if info is not None:
            self._info = info
        now = time.monotonic()
        last = self.total is not None and done >= self.total
        if now - self._log_last < (self.log_every or 0.0) and not last:
            return
        if last and self._logged_last:
            return  # a job reports its end more than once (last item, then the summary update)
        self._logged_last = last
        self._log_last = now
        elapsed = now - self._log_t0 if self._log_t0 is not None else 0.0
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label}: {done}/{self.total if self.total is not None else '?'}"]
        if self.log_unit:
            parts[0] += f" {self.log_unit}"
        if self.total:
            parts[0] += f" ({100.0 * done / self.total:.1f}%)"
        if self.rate_unit is not None:
            parts.append(f"{rate:.1f} {self.rate_unit}/s")
        if self.total is not None and rate > 0:
            parts.append(f"ETA {_duration((self.total - done) / rate)}")
        if self._info:
            parts.append(self._info)
        output.console.file.write(", ".join(parts) + "\n")
        output.console.file.flush()

    def _text(self) -> str:
        if self.rate_unit is None:
            return self._info
        speed = self._bar.tasks[self._task].speed
        rate = f"{speed:.1f} {self.rate_unit}/s" if speed else ""
        return f"{rate}  {self._info}".strip()

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
            self._bar = None
