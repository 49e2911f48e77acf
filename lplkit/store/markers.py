"""Shard completion markers (`progress/shard-XXXXX.json`): which shards are complete, and sound.

A shard counts as written only when its marker exists and names its own shard, range, row counts
and sha256 checksums. The writer creates markers; the reader, `info` and `verify` read them here
(the read side does not import the writer).
"""

from __future__ import annotations

import re
from typing import Any, cast

from lplkit.store import format as fmt

__all__ = ["marker_problem", "marker_shards", "read_marker", "read_marker_checked"]


def marker_problem(marker: Any, shard: int, start: int, stop: int) -> str | None:
    """What is wrong with a parsed completion marker for `shard` = `[start, stop)`, or None."""
    if not isinstance(marker, dict):
        return "the completion marker is not a JSON object"
    if (marker.get("shard"), marker.get("start"), marker.get("stop")) != (shard, start, stop):
        return "the completion marker names another shard or range"
    n_ok, n_skipped = marker.get("n_ok"), marker.get("n_skipped")
    for key, v in (("n_ok", n_ok), ("n_skipped", n_skipped)):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= stop - start:
            return f"the completion marker's {key} {v!r} is not a count in [0, {stop - start}]"
    if cast(int, n_ok) + cast(int, n_skipped) != stop - start:  # both checked ints above
        return f"the completion marker's n_ok + n_skipped is not the shard's {stop - start} rows"
    sums = marker.get("checksums")
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        return "the completion marker's checksums are not a mapping of sha256 strings"
    return None


def read_marker_checked(
    fs: Any, root: str, shard: int, start: int, stop: int
) -> tuple[dict[str, Any] | None, str | None]:
    """(marker, None) when `shard`'s completion marker is present and sound, (None, None) when it
    is absent, (None, problem) when it is damaged."""
    try:
        marker = fmt.read_json_bounded(fs, fmt.marker_path(root, shard), "marker", 1 << 20)
    except FileNotFoundError:
        return None, None
    except ValueError as exc:
        return None, f"the completion marker is damaged ({exc})"
    problem = marker_problem(marker, shard, start, stop)
    return (None, problem) if problem else (marker, None)


def read_marker(fs: Any, root: str, shard: int, start: int, stop: int) -> dict[str, Any] | None:
    """The shard's completion marker if present and consistent with its range, else None."""
    return read_marker_checked(fs, root, shard, start, stop)[0]


def marker_shards(fs: Any, root: str, n_shards: int) -> set[int]:
    """Shard numbers < n_shards that have a marker file (one listing of progress/)."""
    try:
        names = fs.ls(f"{root}/{fmt.PROGRESS_DIR}", detail=False)
    except FileNotFoundError:
        return set()
    found = set()
    for name in names:
        m = re.fullmatch(r"shard-(\d{5,})\.json", str(name).rstrip("/").rsplit("/", 1)[-1])
        if m and int(m.group(1)) < n_shards:
            found.add(int(m.group(1)))
    return found
