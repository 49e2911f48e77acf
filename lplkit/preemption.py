"""Stop at a safe point on SIGTERM or SIGUSR1 (a cluster preemption) instead of dying mid-work.

`stop_signals()` installs, for the duration of a `with` block, handlers that only record the
signal; the long-running loops (`train`: after each step; `encode` and `stats`: after each batch)
poll `StopRequest.requested` at their safe points, save what they can and raise
`lplkit.errors.Preempted` (exit 75). The previous handlers are restored when the block ends, so a
library caller's own handlers (or Python's default: SIGTERM terminates) are back after the call.
SIGINT is left alone: Ctrl-C stays an immediate `KeyboardInterrupt`.

Under torchrun a signal may reach only some ranks (torchrun forwards the signals it handles to
every worker, but a `kill` of one worker pid reaches that worker alone): `stop_agreed` all-reduces
the flag, so every rank stops after the same step.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from lplkit.distributed import DistInfo, all_ok

__all__ = ["PREEMPT_SIGNALS", "StopRequest", "ignore_stop_signals", "stop_agreed", "stop_signals"]

# SIGUSR1 is what SLURM's `--signal=USR1@SECONDS` sends ahead of the end of a job; it does not
# exist on Windows.
PREEMPT_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


@dataclass
class StopRequest:
    """Set by the handlers of `stop_signals` (the first signal received wins)."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """The signal's name for messages (`SIGTERM`), or a placeholder when none arrived here."""
        if self.signum is None:
            return "a stop signal on another rank"
        return signal.Signals(self.signum).name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum


@contextmanager
def stop_signals(signals: tuple[signal.Signals, ...] = PREEMPT_SIGNALS) -> Iterator[StopRequest]:
    """Record `signals` in the yielded `StopRequest` while the block runs; restore the previous
    handlers after it. A nested block shares the enclosing block's request (a signal received
    before the inner loop started is seen by it). Outside the main thread (where Python cannot
    install handlers) nothing is installed and the request is never set."""
    outer = getattr(signal.getsignal(signals[0]), "__self__", None) if signals else None
    if isinstance(outer, StopRequest):
        yield outer
        return
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous: dict[signal.Signals, Any] = {s: signal.signal(s, request._handle) for s in signals}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            # None: a handler installed from C, which Python cannot reinstall; the default is closest
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def stop_agreed(request: StopRequest, info: DistInfo) -> bool:
    """True on every rank when any rank received a stop signal (one MIN all-reduce of a flag under
    torch.distributed; the local flag for one process). Every rank must call it at the same point."""
    return not all_ok(not request.requested, info)


def ignore_stop_signals(signals: tuple[signal.Signals, ...] = PREEMPT_SIGNALS) -> None:
    """Ignore `signals` from now on: for a process that stopped on one and is exiting (the CLI)."""
    if threading.current_thread() is threading.main_thread():
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
