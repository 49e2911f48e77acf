"""Shard completion markers (`progress/shard-XXXXX.json`): which shards are complete, and sound.

A shard counts as written only when its marker exists and names its own shard, range, row counts
and sha256 checksums. The writer creates markers; the reader, `info` and `verify` read them here
(the read side does not import the writer).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from lplkit.store import format as fmt

__all__ = [
    "MarkerScan",
    "index_part_shards",
    "marker_problem",
    "marker_shards",
    "read_marker",
    "read_marker_checked",
    "scan_markers",
]

#: A marker is a few hundred bytes; one bigger than this is damaged and is not read.
MARKER_LIMIT = 1 << 20


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
        marker = fmt.read_json_bounded(fs, fmt.marker_path(root, shard), "marker", MARKER_LIMIT)
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
    return set(_listed(fs, f"{root}/{fmt.PROGRESS_DIR}", "json", n_shards))


def index_part_shards(fs: Any, root: str, n_shards: int) -> set[int]:
    """Shard numbers < n_shards that have an index part (one listing of index_parts/; a finalize
    removes them once index.parquet holds their rows)."""
    return set(_listed(fs, f"{root}/{fmt.INDEX_PARTS_DIR}", "parquet", n_shards))


def _listed(fs: Any, folder: str, suffix: str, n_shards: int) -> dict[int, dict[str, Any]]:
    """{shard: listing entry (name, size)} of the `shard-XXXXX.suffix` files in `folder`."""
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return {}
    found = {}
    for entry in entries:
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        m = re.fullmatch(rf"shard-(\d{{5,}})\.{suffix}", name)
        if m and int(m.group(1)) < n_shards and entry.get("type", "file") == "file":
            found[int(m.group(1))] = entry
    return found


@dataclass
class MarkerScan:
    """The completion markers of a store as one scan found them: `markers` (sound, by shard) and
    `problems` (present but damaged, by shard). A command scans once and passes this down, so each
    marker is read once per command (`scan_markers(..., known=scan)` re-reads only the others)."""

    count: int
    shard_size: int
    markers: dict[int, dict[str, Any]] = field(default_factory=dict)
    problems: dict[int, str] = field(default_factory=dict)
    listings: int = 0  # listings of progress/ behind this scan (reported by the benchmark)
    reads: int = 0  # marker files read behind this scan

    @property
    def n_shards(self) -> int:
        return fmt.n_shards(self.count, self.shard_size)

    def complete(self, shard: int) -> bool:
        return shard in self.markers

    def pending(self, shards: Iterable[int] | None = None) -> list[int]:
        """Shards (default: all) without a sound marker, in order."""
        pool = range(self.n_shards) if shards is None else shards
        return sorted(s for s in pool if s not in self.markers)

    def record(self, marker: dict[str, Any]) -> None:
        """A marker this process just wrote."""
        self.markers[int(marker["shard"])] = marker
        self.problems.pop(int(marker["shard"]), None)

    def forget(self, shard: int) -> None:
        """A marker this process just removed."""
        self.markers.pop(shard, None)
        self.problems.pop(shard, None)


def scan_markers(
    fs: Any,
    root: str,
    count: int,
    shard_size: int,
    *,
    only: Callable[[int], bool] | None = None,
    known: MarkerScan | None = None,
) -> MarkerScan:
    """One listing of progress/, then every listed marker read once (all in one `fs.cat` call:
    concurrent on object stores) and checked against its shard's range.

    `only(shard)` limits the reads to the shards it accepts (a rank's own); `known` is an earlier
    scan of this command whose sound markers are kept without re-reading them (a marker is only
    ever rewritten by its shard's owner, which records it).
    """
    scan = MarkerScan(count, shard_size)
    if known is not None:
        scan.markers = dict(known.markers)
        scan.listings, scan.reads = known.listings, known.reads
    listed = _listed(fs, f"{root}/{fmt.PROGRESS_DIR}", "json", scan.n_shards)
    scan.listings += 1
    scan.markers = {s: m for s, m in scan.markers.items() if s in listed}  # removed since
    todo = {}
    for s, entry in sorted(listed.items()):
        if s in scan.markers or (only is not None and not only(s)):
            continue
        size = entry.get("size")
        if isinstance(size, int) and size > MARKER_LIMIT:
            scan.problems[s] = (
                f"the completion marker is damaged (larger than {MARKER_LIMIT} bytes)"
            )
            continue
        todo[str(entry["name"])] = s
    if not todo:
        return scan
    contents = fs.cat(list(todo), on_error="return")
    scan.reads += len(todo)
    for name, s in todo.items():
        raw = contents.get(name, FileNotFoundError(name))
        if isinstance(raw, FileNotFoundError):  # removed between the listing and the read
            continue
        start, stop = fmt.shard_range(s, count, shard_size)
        try:
            if isinstance(raw, BaseException):
                raise ValueError(f"unreadable: {raw}")
            marker = fmt.parse_json_bounded(raw, "marker", MARKER_LIMIT)
        except ValueError as exc:
            scan.problems[s] = f"the completion marker is damaged ({exc})"
            continue
        problem = marker_problem(marker, s, start, stop)
        if problem:
            scan.problems[s] = problem
        else:
            scan.markers[s] = marker
    return scan
