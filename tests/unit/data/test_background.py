"""lplkit.data.background: order, bounded read-ahead, exceptions at the right item, early stop."""

from __future__ import annotations

import threading
import time

import pytest

from lplkit.data.background import background


def test_yields_every_item_in_order():
    assert list(background(iter(range(1000)), depth=3)) == list(range(1000))
    assert list(background(iter([]))) == []


def test_producer_runs_at_most_depth_items_ahead():
    produced = []

    def source():
        for i in range(100):
            produced.append(i)
            yield i

    it = background(source(), depth=2)
    assert next(it) == 0
    time.sleep(0.3)  # let the producer run as far as the queue allows
    # 1 consumed + 2 queued + 1 produced and blocked on the full queue
    assert len(produced) <= 4
    it.close()


def test_producer_exception_reraises_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in background(source()):
            got.append(x)
    assert got == [1, 2]


def test_closing_the_consumer_stops_the_producer():
    produced = []

    def source():
        for i in range(10_000):
            produced.append(i)
            yield i

    before = set(threading.enumerate())
    it = background(source(), depth=2)
    next(it)
    new = set(threading.enumerate()) - before  # the producer (other tests' threads may come and go)
    assert new
    it.close()
    deadline = time.monotonic() + 30  # generous: a loaded box schedules the producer late
    while any(t.is_alive() for t in new) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(t.is_alive() for t in new)
    assert len(produced) < 10


def test_rejects_depth_below_one():
    with pytest.raises(ValueError):
        list(background(iter([1]), depth=0))
