"""The metrics window: log means over the applied steps, and the skip-streak rule, against hand
computation."""

from __future__ import annotations

import pytest
import torch

from lplkit.distributed import DistInfo
from lplkit.train.losses import LossParts
from lplkit.train.metrics_window import MIN_SKIP_STREAK, MetricsWindow


def _window(every: int, lpl_weight: float = 1.0) -> MetricsWindow:
    return MetricsWindow(every=every, lpl_weight=lpl_weight, device=torch.device("cpu"),
                         dist=DistInfo())  # fmt: skip


def _parts(diff: list[float], lpl: list[float], gated: list[bool]) -> LossParts:
    return LossParts(total=torch.zeros(()), diffusion=torch.tensor(diff), lpl=torch.tensor(lpl),
                     gated=torch.tensor(gated))  # fmt: skip


def test_record_means_cover_the_applied_steps_only():
    w = _window(every=3, lpl_weight=0.5)
    w.add(_parts([1.0, 2.0], [0.0, 4.0], [False, True]))  # step 1: two micro-batches
    w.add(_parts([3.0], [2.0], [True]))
    w.end_step(applied=True, images=3)
    w.add(_parts([100.0, 100.0, 100.0], [9.0, 9.0, 9.0], [True, True, True]))  # step 2: skipped
    w.end_step(applied=False, images=3)
    w.add(_parts([6.0, 0.0, 3.0], [0.0, 0.0, 6.0], [False, False, True]))  # step 3
    w.end_step(applied=True, images=3)
    rec = w.close(step=3, images_seen=9, epoch=1, lr=0.25)
    # by hand: 6 samples of steps 1 and 3; diffusion 15/6, LPL 12/6, 3 of 6 gated
    assert rec["loss_diffusion"] == pytest.approx(15 / 6)
    assert rec["loss_lpl"] == pytest.approx(2.0)
    assert rec["loss"] == pytest.approx(15 / 6 + 0.5 * 2.0)
    assert rec["gate_frac"] == pytest.approx(0.5)
    assert (rec["step"], rec["images_seen"], rec["epoch"], rec["lr"], rec["nan_skips"]) == (
        3, 9, 1, 0.25, 1,
    )  # fmt: skip
    assert list(rec) == ["step", "images_seen", "epoch", "loss", "loss_diffusion", "loss_lpl",
                         "gate_frac", "lr", "nan_skips", "img_per_s", "time_s"]  # fmt: skip
    # the next window starts empty; the run's skip count carries on
    w.add(_parts([7.0], [1.0], [True]))
    w.end_step(applied=True, images=1)
    nxt = w.close(step=4, images_seen=10, epoch=1, lr=0.25)
    assert (nxt["loss_diffusion"], nxt["loss_lpl"], nxt["nan_skips"]) == (7.0, 1.0, 1)


def _stops(skipped: str, every: int, *, start: int = 0, skips_before: int = 0) -> dict:
    """Drive a window through steps start+1.. (`skipped`: 'x' skipped, '.' applied) and return
    {log step: the stop message or None}, as the trainer's loop evaluates the rule."""
    w = _window(every)
    w.load_state_dict(w.state_dict(), skips_before)
    w.begin(start)
    out = {}
    last = start + len(skipped)
    for step, mark in enumerate(skipped, start=start + 1):
        w.end_step(applied=mark == ".", images=1)
        if w.due(step, step == last):
            out[step] = w.diverged(step, step == last)
            w.close(step=step, images_seen=step, epoch=0, lr=0.0)
    return out


def test_skip_streak_rule():
    assert MIN_SKIP_STREAK == 8
    # a streak stops the run only at a log step whose whole window was skipped: 4 in a row at
    # step 4 is survivable, 8 in a row at step 8 is not
    got = _stops("x" * 12, every=4)
    assert got[4] is None
    assert got[8] is not None and "every step of 5..8 was skipped" in got[8]
    # an applied step resets the streak: 4 skipped, 1 applied, 7 skipped -> no stop at step 12
    # (window 9..12 all skipped but the streak is 7), stop at 16 (streak 11)
    got = _stops("xxxx." + "x" * 11 + ".", every=4)
    assert [s for s, why in got.items() if why] == [16], got
    assert "13..16" in got[16]
    # a window with one applied step never stops the run, however long the streak before it
    assert not any(_stops("x" * 15 + ".", every=16).values())
    # the end of a run that skipped every step stops it, even without a streak of 8 ...
    got = _stops("xxx", every=10)
    assert got[3] is not None and "1..3" in got[3]
    # ... but not the end of one that applied a step in an earlier window
    assert not any(_stops(".xx", every=1).values())
    assert not any(_stops(".x", every=1).values())


def test_skip_streak_counts_from_the_resumed_step():
    # resumed at step 10 with 10 steps skipped before: the streak and "whole run" start here
    got = _stops("xxx", every=2, start=10, skips_before=10)
    assert got[12] is None  # 2 in a row
    assert got[13] is not None and "13..13" in got[13]  # the run (from 11) skipped every step
    assert not any(_stops(".xx", every=1, start=10, skips_before=10).values())
