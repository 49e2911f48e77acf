"""`encode_text()`: cache a text encoder's outputs on every row's caption in a finished store.

The captions are the store's own (index.parquet `caption`, written by `lplkit encode` from the
source), so row `i` of the text arrays always belongs to latent row `i`: flip copies share it,
skipped images get zeros. A row whose caption is missing or "" gets the empty caption's outputs and
is counted (`counts.empty`); captions over L tokens are truncated and counted (`counts.truncated`).

Work is per store shard (the moments' shards): the shard's ok rows are encoded `batch_size` at a
time from the shard's start, so a resumed or distributed run gives the bytes of a one-go run.
`lplkit encode --text-encoder` runs this after the images, inside the same job and lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lplkit.errors import Interrupted, Preempted
from lplkit.store import format as fmt
from lplkit.store.buckets import buckets_of
from lplkit.store.sidecar import url_to_fs
from lplkit.store.text import TextWriter, ok_rows
from lplkit.text.config import TextConfig
from lplkit.text.encoders import TextEncoder, default_name, encode_captions

__all__ = ["TextConfig", "TextSummary", "encode_text", "encode_text_into"]

ProgressFn = Callable[[int, int], None]


@dataclass
class TextSummary:
    """What one text encode did."""

    store: str
    name: str
    shards_total: int = 0
    shards_written: int = 0
    rows_encoded: int = 0  # ok rows encoded by this run
    completed: bool = False
    counts: dict[str, int] | None = None  # the entry's counts once completed
    encode_s: float = 0.0
    rows_per_s: float = 0.0
    entry: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_text(
    cfg: TextConfig, progress: ProgressFn | None = None, stop: Any = None
) -> TextSummary:
    """`lplkit encode-text`: load the encoder, add (or resume) its outputs in `cfg.store`."""
    import torch  # noqa: F401  (the encoder's)

    from lplkit.distributed import resolve_device
    from lplkit.store.format import require_store_path
    from lplkit.text.encoders import load_text_encoder

    cfg.validate()
    require_store_path(cfg.store)
    _, manifest = fmt.open_manifest(cfg.store)  # missing or damaged: one line before the model
    te = load_text_encoder(cfg.text_encoder, revision=cfg.text_encoder_revision, preset=cfg.text_preset,
                           layer=cfg.text_layer, max_tokens=cfg.text_max_tokens,
                           device=resolve_device(cfg.device))  # fmt: skip
    name = cfg.name or default_name(cfg.text_encoder)
    buckets = buckets_of(manifest)
    if buckets is not None:
        return _encode_text_buckets(cfg, te, name, [b.id for b in buckets], progress, stop)
    writer = TextWriter.create_or_resume(cfg.store, name, te.entry(cfg.text_dtype))
    try:
        return encode_text_into(writer, te, cfg.text_batch_size, progress, stop)
    except KeyboardInterrupt as exc:
        if isinstance(exc, Interrupted):
            raise
        done = writer.n_shards - len(writer.all_pending_shards())
        raise Interrupted(f"encode-text interrupted: {done}/{writer.n_shards} shards complete; "
                          "re-run the same command to resume") from exc  # fmt: skip
    finally:
        writer.close()


def _encode_text_buckets(
    cfg: TextConfig,
    te: TextEncoder,
    name: str,
    buckets: list[int],
    progress: ProgressFn | None,
    stop: Any,
) -> TextSummary:
    """`encode_text` on a bucketed store: each bucket's store caches its own rows (under the
    root's writer lock), the summaries summed."""
    from lplkit.store.buckets import bucket_url
    from lplkit.store.lock import StoreLock

    fs, root = url_to_fs(cfg.store)
    lock = StoreLock(fs, root)
    lock.acquire()
    try:
        writers = [TextWriter.create_or_resume(bucket_url(cfg.store, b), name,
                                               te.entry(cfg.text_dtype), take_lock=False)
                   for b in buckets]  # fmt: skip
        counts: dict[str, int] = {}
        total = TextSummary(store=cfg.store, name=name, completed=True, counts=counts)
        for writer in writers:
            part = encode_text_into(writer, te, cfg.text_batch_size, progress, stop)
            total.shards_total += part.shards_total
            total.shards_written += part.shards_written
            total.rows_encoded += part.rows_encoded
            total.encode_s += part.encode_s
            total.completed = total.completed and part.completed
            for k, v in (part.counts or {}).items():
                counts[k] = counts.get(k, 0) + int(v)
            total.entry = part.entry
        total.rows_per_s = total.rows_encoded / total.encode_s if total.encode_s > 0 else 0.0
        return total
    finally:
        lock.release()


def encode_text_into(
    writer: TextWriter,
    te: TextEncoder,
    batch_size: int,
    progress: ProgressFn | None = None,
    stop: Any = None,
    finalize: bool = True,
) -> TextSummary:
    """Encode this rank's pending text shards of `writer`'s store, then (`finalize`, rank 0) mark
    the entry completed. Returns this rank's summary."""
    fs, root = url_to_fs(writer.url)
    ok, captions = ok_rows(fs, root, writer.count)
    empty, _ = encode_captions(te, [""])
    writer.write_empty(empty)
    shards = writer.pending_shards()
    summary = TextSummary(store=writer.url, name=writer.name, shards_total=writer.n_shards)
    total = sum(int(ok[slice(*writer.shard_range(s))].sum()) for s in shards)
    t0 = time.perf_counter()
    for s in shards:
        start, stop_ = writer.shard_range(s)
        shard_ok = ok[start:stop_]
        rows = np.flatnonzero(shard_ok)
        texts = [captions[start + int(r)].as_py() or "" for r in rows]
        outputs = {a: np.zeros((stop_ - start, *shape), np.float32)
                   for a, shape in _shapes(writer.entry).items()}  # fmt: skip
        n_truncated = 0
        for b in range(0, len(rows), batch_size):
            got, truncated = encode_captions(te, texts[b : b + batch_size])
            for a, values in got.items():
                outputs[a][rows[b : b + batch_size]] = values
            n_truncated += int(truncated.sum())
            summary.rows_encoded += len(truncated)
            if progress is not None:
                progress(summary.rows_encoded, total)
        n_empty = sum(1 for t in texts if not t)
        writer.write_shard(s, outputs, shard_ok, n_truncated, n_empty)
        summary.shards_written += 1
        if stop is not None and stop.requested:
            break
    summary.encode_s = time.perf_counter() - t0
    summary.rows_per_s = summary.rows_encoded / summary.encode_s if summary.encode_s > 0 else 0.0
    pending = writer.all_pending_shards()
    if stop is not None and stop.requested and pending:
        raise Preempted(f"encode-text preempted by {stop.name}: {writer.n_shards - len(pending)}/"
                        f"{writer.n_shards} shards complete; re-run the same command to resume")  # fmt: skip
    if finalize and writer.rank == 0:
        writer.finalize()
        summary.completed = True
        summary.counts = writer.entry["counts"]
    summary.entry = dict(writer.entry)
    return summary


def _shapes(entry: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    from lplkit.store.text import row_shapes

    return row_shapes(entry)
