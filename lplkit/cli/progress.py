"""The one progress line of the CLI: a rich bar on stderr fed by a library callback.

Commands pass `bar.update` (or a lambda around it) as the library's progress callback; the library
never imports rich. A disabled bar (non-zero ranks, `--json`) renders nothing and costs nothing.
"""

from __future__ import annotations

from typing import Any

from lplkit.cli import output

__all__ = ["LiveProgress"]


class LiveProgress:
    """`label [bar] done/total  info  ETA` on stderr.

    Args:
        label: what is counted, shown first.
        enabled: False = render nothing (every method is a no-op).
        total: the count at 100%; None = given by the first `update`.
        rate_unit: when set, the info field starts with the measured rate, e.g. ``12.5 img/s``.
        transient: remove the line when done (the command prints its own summary).
    """

    def __init__(
        self,
        label: str,
        *,
        enabled: bool = True,
        total: int | None = None,
        rate_unit: str | None = None,
        transient: bool = False,
    ) -> None:
        self.label = label
        self.enabled = enabled
        self.total = total
        self.rate_unit = rate_unit
        self.transient = transient
        self._bar: Any = None
        self._task: Any = None
        self._info = ""

    def __enter__(self) -> LiveProgress:
        if self.enabled:
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
        if self._bar is None:
            return
        if total is not None:
            self.total = total
        if info is not None:
            self._info = info
        if self._task is None:
            self._task = self._bar.add_task(self.label, total=self.total, info=self._info)
        self._bar.update(self._task, completed=done, total=self.total, info=self._text())

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
