"""Learning-rate schedules: a multiplier of `optim.lr` per optimizer step k (a `LambdaLR` lambda).

Warm-up (all schedules): ``f(k) = (k + 1) / W`` for ``k < W`` (the first step already moves).
After it, with ``p = min(1, (k - W) / max(1, D - W))`` (D = ``optim.decay_steps``, default the run's
``steps``) and ``m = optim.min_lr_ratio``:

    constant:  f = 1
    cosine:    f = m + (1 - m) * (1 + cos(pi p)) / 2
    linear:    f = m + (1 - m) * (1 - p)

With ``m = 0`` the decay equals diffusers' ``get_cosine_schedule_with_warmup`` /
``get_linear_schedule_with_warmup`` after the warm-up (tested against them); the warm-up differs
by one step (diffusers starts at ``k / W``, i.e. an LR of 0 on the first step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from lplkit.errors import ConfigError

Schedule = Literal["constant", "cosine", "linear"]
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "linear")

__all__ = ["SCHEDULES", "Schedule", "lr_lambda"]


def lr_lambda(
    schedule: str, warmup_steps: int, decay_steps: int, min_lr_ratio: float = 0.0
) -> Callable[[int], float]:
    """The LR multiplier ``f(k)`` of the module docstring."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown LR schedule {schedule!r}; use {', '.join(SCHEDULES)}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    w, m = max(0, int(warmup_steps)), float(min_lr_ratio)
    span = max(1, int(decay_steps) - w)

    def f(k: int) -> float:
        if k < w:
            return (k + 1) / w
        if schedule == "constant":
            return 1.0
        p = min(1.0, (k - w) / span)
        if schedule == "cosine":
            return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * p))
        return m + (1.0 - m) * (1.0 - p)

    return f
