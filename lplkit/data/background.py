"""`background(it)`: run an iterator in a thread, a few items ahead of its consumer.

`lplkit encode` uses it so that receiving decoded batches from the DataLoader workers (shared-memory
tensor hand-over: ~2 ms per 3 MB item, main-thread time otherwise) and moving them to the device
overlap with the autoencoder instead of following it. The producer's exceptions re-raise in the
consumer, at the item where they happened; closing the consumer (or an exception in it) stops the
producer at its next item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()
_POLL_S = 0.1  # how often a producer blocked on a full queue checks for a stop


def background(it: Iterator[T], depth: int = 2, name: str = "lplkit-background") -> Iterator[T]:
    """Yield the items of `it`, produced by a daemon thread at most `depth` items ahead.

    Create `it` (e.g. a DataLoader iterator, which forks its workers) in the calling thread; only
    `next(it)` runs in the background thread.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[object, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in it:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put((None, exc))

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, exc = items.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        stop.set()
