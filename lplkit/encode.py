"""`encode_dataset()`: image source -> ADM crop -> autoencoder moments -> sharded latent store.

Pipeline per process (one process, or every rank of a torchrun job):

1. resolve the source (`--limit` keeps its first N positions) and load the autoencoder; under
   torchrun rank 0 does both first (downloads, dataset preparation), then the other ranks;
2. `StoreWriter.create_or_resume`: rank 0 creates the store or checks that the existing one was made
   with the same autoencoder/res/crop/dtype/flips/shard size/source (else `StoreMismatchError`);
3. this rank's pending shards (shard s belongs to rank s % world) are read by DataLoader workers,
   which decode, check and crop (so the autoencoder never waits on PIL), in batches that never cross
   a shard boundary: a shard's batches are the same whatever ran before, which makes a resumed or
   distributed store byte-identical to a one-go, one-process one.
   A background thread receives the workers' items and moves each batch to the device (as uint8)
   while the autoencoder runs;
4. each batch is encoded in eval/no-grad (optionally under autocast), together with its horizontal
   flip when `flip`; a completed shard is handed to a background thread that writes it (arrays,
   index part, checksummed completion marker) while the next shard encodes;
5. after every rank is done, rank 0 finalizes the store (index.parquet, counts, completed = True).

On SIGTERM or SIGUSR1 (`lplkit.preemption`) a rank stops after the batch in flight, drops its
unfinished shard, lets queued shard writes finish and meets the other ranks at the end of the job;
every rank then raises `Preempted` (exit 75) and the same command resumes. Ctrl-C raises
`Interrupted` naming the complete shards (queued writes finish first).
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lplkit.autoencoders.loading import (
    autoencoder_info,
    default_autoencoder,
    encode_moments,
    load_autoencoder,
    missing_vae_message,
)
from lplkit.data.background import background
from lplkit.data.prepared import ImageSizes, PreparedSample, PreparedSource, collate_prepared
from lplkit.data.sources import ImageSource, LimitedSource, SubsetSource, resolve_source
from lplkit.data.transforms import MIN_IMAGE_SIDE, hflip, to_unit_range
from lplkit.distributed import DistContext, resolve_device
from lplkit.errors import (
    AutoencoderError,
    BadImageError,
    ConfigError,
    Interrupted,
    Preempted,
    StoreError,
)
from lplkit.preemption import StopRequest, stop_signals
from lplkit.store import format as fmt
from lplkit.store.bucketed import BucketedWriter, bucketed_manifest
from lplkit.store.buckets import Bucket, assign_bucket, bucket_sizes, bucket_url, buckets_of
from lplkit.store.encode_config import AUTOCAST_DTYPES, EncodeConfig
from lplkit.store.text import check_compatible
from lplkit.store.writer import StoreWriter

__all__ = ["EncodeConfig", "EncodeSummary", "encode_dataset"]

ProgressFn = Callable[[int, int], None]
T = TypeVar("T")
_AUTOCAST = dict(zip(AUTOCAST_DTYPES, (None, torch.bfloat16, torch.float16), strict=True))


def default_workers() -> int:
    """Decode workers when --workers is not given: the cores this process may use, minus one for the
    encoder loop, at most 8 (more than the machine has only adds contention and torch's warning)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 2
    return max(1, min(8, cores - 1))


@dataclass
class EncodeSummary:
    """What one `encode_dataset` call did (counts summed over ranks)."""

    store: str
    total: int  # positions in the store
    encoded: int  # samples encoded by this run
    skipped: int  # bad samples recorded as skipped by this run
    skip_reasons: dict[str, int] = field(default_factory=dict)  # reason kind -> count
    shards_total: int = 0
    shards_written: int = 0  # by this run
    shards_already_done: int = 0  # complete before this run started (resume)
    completed: bool = False  # the store is finalized
    world_size: int = 1
    device: str = "cpu"
    elapsed_s: float = 0.0  # the whole call (loading included)
    encode_s: float = 0.0  # the shard loop only
    input_wait_s: float = 0.0  # rank 0's loop time waiting for decoded batches (-> more --workers)
    write_wait_s: float = 0.0  # rank 0's loop time waiting for shard writes to finish
    images_per_s: float = 0.0  # (encoded + skipped) / encode_s, all ranks together
    text: list[dict[str, Any]] = field(default_factory=list)  # one TextSummary per encoder
    text_s: float = 0.0  # the text encoders' shard loops (after the images)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Positions per DataLoader item. An autoencoder batch is assembled from several items, so the first
#: batch is ready after WORKER_CHUNK decodes per worker instead of batch_size, and the workers share
#: the load evenly; the batches' composition (hence the numbers) does not depend on it.
WORKER_CHUNK = 16


def shard_batches(writer: StoreWriter, shards: list[int], batch_size: int) -> list[list[int]]:
    """Batches of positions, `batch_size` at a time from each shard's start; none crosses shards."""
    batches: list[list[int]] = []
    for s in shards:
        start, stop = writer.shard_range(s)
        batches.extend(
            list(range(b, min(b + batch_size, stop))) for b in range(start, stop, batch_size)
        )
    return batches


def split_batches(batches: list[list[int]], chunk: int) -> tuple[list[list[int]], list[int]]:
    """Cut each batch into loader items of at most `chunk` positions: (items, items per batch)."""
    items: list[list[int]] = []
    parts: list[int] = []
    for b in batches:
        pieces = [b[i : i + chunk] for i in range(0, len(b), chunk)]
        items.extend(pieces)
        parts.append(len(pieces))
    return items, parts


# ---------------------------------------------------------------------------------------------
# Main process side


class _ShardBuffer:
    """Accumulates one shard's moments, labels and index rows until every position is in."""

    def __init__(self, shard: int, start: int, stop: int, latent: tuple[int, ...], flip: bool):
        n = stop - start
        self.shard, self.start, self.missing = shard, start, n
        self.moments = np.zeros((n, 2, *latent), np.float32)
        self.moments_flip = np.zeros((n, 2, *latent), np.float32) if flip else None
        self.labels = np.full((n,), -1, np.int32)
        self.rows: list[dict[str, Any] | None] = [None] * n

    def put(
        self, s: PreparedSample, moments: np.ndarray | None, moments_flip: np.ndarray | None
    ) -> None:
        i = s.position - self.start
        if moments is not None:
            self.moments[i] = moments
        if moments_flip is not None and self.moments_flip is not None:
            self.moments_flip[i] = moments_flip
        self.labels[i] = s.row["label"]
        self.rows[i] = {"position": s.position, **s.row}
        self.missing -= 1


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


def encode_dataset(cfg: EncodeConfig, progress: ProgressFn | None = None) -> EncodeSummary:
    """Encode `cfg.dataset` into the store at `cfg.out` (creating or resuming it); see module doc.

    `progress(done, total)` is called after every batch with this rank's sample counts.
    """
    t0 = time.perf_counter()
    cfg.validate()
    vae_spec = cfg.vae or default_autoencoder(cfg.dataset)
    if vae_spec is None:
        raise ConfigError(missing_vae_message(cfg.dataset))
    # A signal from here on is recorded: a signal while loading stops after the first batch, and
    # one torchrun sends while this rank tears down after a preemption is harmless.
    with stop_signals() as stop, DistContext.from_env(cfg.device, error=StoreError) as ctx:
        device = resolve_device(cfg.device, ctx.local_rank)
        source, vae, info = ctx.rank0_first(lambda: _load(cfg, vae_spec, device))
        texts = ctx.rank0_first(lambda: _load_text(cfg, source, device))
        if texts and ctx.rank == 0:  # an existing store's encoder of that name: refused up front
            for url, existing in _existing_manifests(cfg.out):
                for text_cfg, te in texts:
                    check_compatible(url, existing, text_cfg.name, te.entry(text_cfg.text_dtype))
        f = info["downsample_factor"]
        if cfg.res % f:
            raise ConfigError(f"--res {cfg.res} is not a multiple of the autoencoder's factor {f}")
        latent = (info["latent_channels"], cfg.res // f, cfg.res // f)
        autoencoder = {**info, "autocast": cfg.autocast}  # compute dtype is part of the identity
        manifest = fmt.new_manifest(
            autoencoder=autoencoder,
            resolution=cfg.res,
            latent_shape=latent,
            source=source.describe(),
            dtype=cfg.dtype,
            flips=cfg.flip,
            shard_size=cfg.shard_size,
            shard_mb=cfg.shard_mb,
            classes=source.class_names,
        )
        writer: StoreWriter | BucketedWriter
        if cfg.buckets is None:
            writer = ctx.rank0_first(
                lambda: StoreWriter.create_or_resume(
                    cfg.out, manifest, rank=ctx.rank, world_size=ctx.world_size
                )
            )
            parts: list[_Part] = [(writer, source, latent, None)]
        else:  # sizes checked (one line, exit 2) before the pre-pass and before any write
            sizes = bucket_sizes(cfg.buckets, cfg.res, step=cfg.bucket_step,
                                 max_aspect=cfg.max_aspect, multiple=f * cfg.patch_multiple)  # fmt: skip
            buckets, members = _bucket_plan(cfg, ctx, source, sizes, latent[0], f)
            writer = ctx.rank0_first(
                lambda: BucketedWriter.create_or_resume(
                    cfg.out, bucketed_manifest(manifest, buckets), rank=ctx.rank,
                    world_size=ctx.world_size, shard_size=cfg.shard_size, shard_mb=cfg.shard_mb,
                )
            )  # fmt: skip
            if ctx.rank == 0 and writer.all_pending_shards():
                writer.invalidate()
            parts = [
                (w, SubsetSource(source, members[b.id]), b.latent_shape, b.size)
                for b, w in zip(buckets, writer.writers, strict=True)
            ]
        try:
            summary = _encode_shards(cfg, ctx, parts, vae, device, progress, stop)
            summary.total = int(manifest["source"]["count"])
            summary.shards_total = writer.n_shards
            # every rank reaches these collectives, a stopped one early; then all stop or finish
            # each rank counts its own pending shards from the markers it knows (no rank reads
            # another's markers; rank 0's finalize reads the ones it has not seen, once each)
            totals = ctx.sum_ints(
                [summary.encoded, summary.skipped, summary.shards_written, int(stop.requested),
                 len(writer.pending_shards())]
            )  # fmt: skip
            summary.encoded, summary.skipped, summary.shards_written, stopped, pending = totals
            summary.skip_reasons = dict(sum(ctx.gather(Counter(summary.skip_reasons)), Counter()))
            summary.encode_s = max(ctx.gather(summary.encode_s))  # the slowest rank's loop
            processed = summary.encoded + summary.skipped
            summary.images_per_s = processed / summary.encode_s if summary.encode_s > 0 else 0.0
            summary.shards_already_done = writer.n_shards - pending - summary.shards_written
            if stopped and pending:  # (a signal after the last shard lets the store finish)
                raise Preempted(
                    f"encode preempted by {stop.name}: {writer.n_shards - pending}/"
                    f"{writer.n_shards} shards complete, the shards in flight were dropped; "
                    "re-run the same command to resume"
                )
            if ctx.rank == 0:
                summary.completed = bool(writer.finalize()["completed"])
            summary.completed = bool(ctx.broadcast(summary.completed))
            t_text = time.perf_counter()
            for text_cfg, te in texts:  # the images are in; rank 0 still holds the store lock
                for part in parts:  # a bucketed store: each bucket caches its own rows
                    summary.text.append(_encode_text(cfg, ctx, text_cfg, te, stop, part[0].url))
            summary.text_s = time.perf_counter() - t_text
        except KeyboardInterrupt as exc:
            if isinstance(exc, Interrupted):
                raise
            done = writer.n_shards - len(writer.all_pending_shards())
            raise Interrupted(
                f"encode interrupted: {done}/{writer.n_shards} shards complete; "
                "re-run the same command to resume"
            ) from exc
        finally:
            writer.close()
    summary.elapsed_s = time.perf_counter() - t0
    return summary


def _load(cfg: EncodeConfig, vae_spec: str, device: torch.device) -> tuple[ImageSource, Any, dict]:
    source = resolve_source(
        cfg.dataset,
        cfg.split,
        image_column=cfg.image_column,
        label_column=cfg.label_column,
        caption_column=cfg.caption_column,
        revision=cfg.revision,
        res=cfg.res,
    )
    if cfg.limit is not None and cfg.limit < len(source):
        source = LimitedSource(source, cfg.limit)
    vae = load_autoencoder(
        vae_spec, subfolder=cfg.vae_subfolder, device=device, revision=cfg.vae_revision
    )
    return source, vae, autoencoder_info(vae, vae_spec, cfg.vae_subfolder)


def _existing_manifest(url: str) -> Any:
    """The manifest of the store at `url`, or None when there is none (yet) or it is unreadable
    (the writer reports that)."""
    try:
        return fmt.read_manifest(url)
    except (OSError, ValueError):
        return None


def _existing_manifests(url: str) -> list[tuple[str, Any]]:
    """(url, manifest) of the store at `url`, or of each bucket of a bucketed one (whose text
    encoders live in the buckets)."""
    root = _existing_manifest(url)
    buckets = buckets_of(root) if isinstance(root, dict) else None
    if not buckets:
        return [(url, root)]
    return [(bucket_url(url, b.id), _existing_manifest(bucket_url(url, b.id))) for b in buckets]


#: (writer, source, latent shape, bucket size (W, H) or None = square --res) of one store part
_Part = tuple[StoreWriter, ImageSource, tuple[int, int, int], "tuple[int, int] | None"]

#: Images per item of the bucket pre-pass (header reads only)
SIZE_CHUNK = 64


def _bucket_plan(
    cfg: EncodeConfig,
    ctx: DistContext,
    source: ImageSource,
    sizes: list[tuple[int, int]],
    channels: int,
    factor: int,
) -> tuple[list[Bucket], list[list[int]]]:
    """The pre-pass of `--buckets`: every image's size from its header (each rank reads every
    world_size-th one, then all gather), its nearest bucket (`assign_bucket`; an image that
    cannot be opened goes to the squarest bucket, where the encode records why it is skipped);
    returns the non-empty buckets in aspect order, renumbered 0.., and each one's source
    positions in source order."""
    n = len(source)
    mine = list(range(ctx.rank, n, ctx.world_size))
    workers = default_workers() if cfg.workers is None else cfg.workers
    loader = DataLoader(
        ImageSizes(SubsetSource(source, mine)),
        batch_size=SIZE_CHUNK,
        num_workers=min(workers, max(0, len(mine) // SIZE_CHUNK)),
        collate_fn=list,
    )
    found = [size for batch in loader for size in batch]
    image_sizes: list[tuple[int, int] | None] = [None] * n
    for rank, got in enumerate(ctx.gather(found)):
        image_sizes[rank :: ctx.world_size] = got
    nearest = functools.lru_cache(maxsize=None)(lambda w, h: assign_bucket(sizes, w, h))
    square = assign_bucket(sizes, 1, 1)
    members: list[list[int]] = [[] for _ in sizes]
    for p, size in enumerate(image_sizes):
        if size is None:
            members[square].append(p)
        else:
            g = math.gcd(*size)
            members[nearest(size[0] // g, size[1] // g)].append(p)
    buckets: list[Bucket] = []
    out: list[list[int]] = []
    start = 0
    for k, rows in enumerate(members):
        if rows:
            w, h = sizes[k]
            buckets.append(Bucket(len(buckets), (w, h), (channels, h // factor, w // factor),
                                  len(rows), start))  # fmt: skip
            out.append(rows)
            start += len(rows)
    return buckets, out


def _load_text(
    cfg: EncodeConfig, source: ImageSource, device: torch.device
) -> list[tuple[Any, Any]]:
    """Load every --text-encoder before anything is written (a missing one fails first)."""
    if not cfg.text_encoder:
        return []
    inner = getattr(source, "inner", source)
    if getattr(inner, "caption_column", "") is None:  # a table source with no caption column
        raise ConfigError(
            f"--text-encoder needs captions, and {cfg.dataset} has no caption column (found "
            "automatically: caption, captions, text, txt, prompt, sentence); columns: "
            f"{', '.join(getattr(inner, 'columns', []))}; pass --caption-column"
        )
    from lplkit.text.encoders import load_text_encoder

    return [
        (
            t,
            load_text_encoder(
                t.text_encoder,
                revision=t.text_encoder_revision,
                preset=t.text_preset,
                layer=t.text_layer,
                max_tokens=t.text_max_tokens,
                device=device,
            ),
        )
        for t in cfg.text_configs()
    ]


def _encode_text(
    cfg: EncodeConfig, ctx: DistContext, text_cfg: Any, te: Any, stop: StopRequest, url: str
) -> dict[str, Any]:
    """One text encoder over the finished store at `url` (the store, or one bucket of it): each
    rank its own shards, rank 0 finalizes."""
    from lplkit.store.text import TextWriter
    from lplkit.text.cache import encode_text_into

    writer = ctx.rank0_first(
        lambda: TextWriter.create_or_resume(
            url,
            text_cfg.name,
            te.entry(text_cfg.text_dtype),
            rank=ctx.rank,
            world_size=ctx.world_size,
            take_lock=False,
        )
    )
    summary = encode_text_into(writer, te, text_cfg.text_batch_size, stop=stop, finalize=False)
    ctx.sum_ints([summary.rows_encoded])  # every rank's shards are written before rank 0 finalizes
    if ctx.rank == 0:
        writer.finalize()
        summary.completed, summary.counts = True, writer.entry["counts"]
    out = summary.to_dict()
    out.pop("entry")
    return out


class _PartsSource(Dataset):
    """The prepared samples of several parts (the store, or each bucket) as one dataset for one
    DataLoader: index `offsets[k] + i` is position `i` of part `k` (its `PreparedSample.position`
    is `i`), so the workers start once for every bucket."""

    def __init__(self, sources: list[PreparedSource]) -> None:
        self.sources = sources
        self.offsets = np.cumsum([0, *(len(src) for src in sources)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> PreparedSample:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.sources[k][index - int(self.offsets[k])]


def _encode_shards(
    cfg: EncodeConfig,
    ctx: DistContext,
    parts: list[_Part],
    vae: Any,
    device: torch.device,
    progress: ProgressFn | None,
    stop: StopRequest | None = None,
) -> EncodeSummary:
    """Encode and write this rank's pending shards of every part (the store; or each bucket, its
    images at the bucket's size); returns this rank's counts. When `stop` is requested it returns
    after the current batch: shards not yet filled are dropped (a resume re-encodes them), the
    filled ones are written before it returns."""
    pending = [w.pending_shards() for w, *_ in parts]
    per_part = [shard_batches(w, shards, cfg.batch_size)
                for (w, *_), shards in zip(parts, pending, strict=True)]  # fmt: skip
    total = sum(len(b) for batches in per_part for b in batches)
    summary = EncodeSummary(
        store=str(cfg.out),
        total=sum(w.count for w, *_ in parts),
        encoded=0,
        skipped=0,
        shards_total=sum(w.n_shards for w, *_ in parts),
        world_size=ctx.world_size,
        device=str(device),
    )
    reasons: Counter[str] = Counter()
    min_side = cfg.min_side or MIN_IMAGE_SIDE
    dataset = _PartsSource(
        [PreparedSource(src, cfg.res, min_side=min_side, size=size) for _, src, _, size in parts]
    )
    # loader indices = part offset + position; an autoencoder batch never spans two parts
    batches = [[int(dataset.offsets[k]) + p for p in b]
               for k, part_batches in enumerate(per_part) for b in part_batches]  # fmt: skip
    batch_part = [k for k, part_batches in enumerate(per_part) for _ in part_batches]
    items, n_items = split_batches(batches, WORKER_CHUNK)
    workers = default_workers() if cfg.workers is None else cfg.workers
    loader = DataLoader(
        dataset,
        batch_sampler=items,
        num_workers=workers,
        collate_fn=collate_prepared,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )
    buffers = {
        (k, s): _ShardBuffer(s, *w.shard_range(s), latent, cfg.flip)
        for k, ((w, _, latent, _), shards) in enumerate(zip(parts, pending, strict=True))
        for s in shards
    }
    done = 0
    t_loop = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lplkit-shard-writer") as pool:
        writes: deque[Future] = deque(
            [pool.submit(parts[0][0].warm_up)]
        )  # while the first batch decodes
        # Receiving decoded items and moving them to the device run in a background thread, so
        # they overlap with the autoencoder; the workers are forked here, by this thread.
        assembled = background(
            _assembled(iter(loader), n_items, device), name="lplkit-encode-input"
        )
        encoded = _encoded_batches(_waited(assembled, summary), vae, cfg)
        for (samples, moments, moments_flip), k in zip(encoded, batch_part, strict=False):
            writer, _, latent, _ = parts[k]
            if moments is not None and tuple(moments.values.shape[2:]) != latent:
                raise AutoencoderError(
                    f"the autoencoder produced latents of shape {tuple(moments.values.shape[2:])}, "
                    f"expected {latent} for --res {cfg.res}"
                )
            for j, s in enumerate(samples):
                if not s.ok:
                    if cfg.strict:
                        raise BadImageError(
                            f"{s.origin}: {s.row['reason']} (fix or remove it, or run without "
                            "--strict to record it as skipped)"
                        )
                    reasons[_reason_kind(s.row["reason"])] += 1
                    summary.skipped += 1
                else:
                    summary.encoded += 1
                key = (k, s.position // writer.manifest["shard_size"])
                i = -1 if moments is None else int(moments.index_of[j])
                buffers[key].put(
                    s,
                    None if moments is None or i < 0 else moments.values[i],
                    None if i < 0 or moments_flip is None else moments_flip[i],
                )
                if buffers[key].missing == 0:
                    buf = buffers.pop(key)
                    writes.append(pool.submit(_write, writer, buf))
                    summary.shards_written += 1
                    while len(writes) > 1:  # bound memory: at most one shard queued behind
                        _wait(writes.popleft(), summary)
            done += len(samples)
            if progress is not None:
                progress(done, total)
            if stop is not None and stop.requested:
                buffers.clear()
                break
        encoded.close()  # after a stop: ends the input thread and the DataLoader workers now
        while writes:
            _wait(writes.popleft(), summary)
    summary.encode_s = time.perf_counter() - t_loop
    summary.skip_reasons = dict(reasons)
    if buffers:
        raise StoreError(f"internal: shards {sorted(buffers)} were not filled")
    return summary


def _wait(write: Future, summary: EncodeSummary) -> None:
    t = time.perf_counter()
    write.result()
    summary.write_wait_s += time.perf_counter() - t


def _write(writer: StoreWriter, buf: _ShardBuffer) -> None:
    rows = [r for r in buf.rows if r is not None]
    assert len(rows) == len(buf.rows), "a shard is written only once every position is in"
    writer.write_shard(buf.shard, buf.moments, buf.moments_flip, buf.labels, rows)


@dataclass
class _Moments:
    values: np.ndarray  # (k, 2, C, h, w) for the k ok samples of a batch
    index_of: np.ndarray  # batch slot -> row in `values`, -1 for skipped samples


def _encoded_batches(
    batches: Iterator[tuple[list[PreparedSample], torch.Tensor | None]],
    vae: Any,
    cfg: EncodeConfig,
) -> Generator[tuple[list[PreparedSample], _Moments | None, np.ndarray | None], None, None]:
    """Encode batches one step ahead of their consumer: batch k+1 is queued on the device before
    batch k's results are copied back, so a GPU never idles on the host-side bookkeeping."""
    pending: deque[tuple[list[PreparedSample], Any]] = deque()
    amp = _AUTOCAST[cfg.autocast]
    for samples, x in batches:
        launched: Any = None
        if x is not None:
            device = x.device
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                if cfg.flip:
                    mean, std = encode_moments(vae, torch.cat([x, hflip(x)]))
                else:
                    mean, std = encode_moments(vae, x)
            launched = torch.stack([mean, std], dim=1).to("cpu", non_blocking=True)
            if device.type == "cuda":  # marks the end of this batch's copy back, not later work
                copied = torch.cuda.Event()
                copied.record()
                launched = (launched, copied)
        pending.append((samples, launched))
        if len(pending) > 1:
            yield _unpack(*pending.popleft(), cfg.flip)
    while pending:
        yield _unpack(*pending.popleft(), cfg.flip)


def _assembled(
    it: Iterator[tuple[list[PreparedSample], torch.Tensor | None]],
    parts: list[int],
    device: torch.device,
) -> Iterator[tuple[list[PreparedSample], torch.Tensor | None]]:
    """Autoencoder batches from `parts[k]` loader items each: rows in order, and the ok pixels on
    `device` as float32 in [-1, 1] (moved as uint8, converted there)."""
    for k in parts:
        samples: list[PreparedSample] = []
        xs: list[torch.Tensor] = []
        for _ in range(k):
            item_samples, item_x = next(it)
            samples.extend(item_samples)
            if item_x is not None:
                xs.append(item_x.to(device, non_blocking=True))
        x = None
        if xs:
            x = to_unit_range(xs[0] if len(xs) == 1 else torch.cat(xs))
        yield samples, x


def _waited(it: Iterator[T], summary: EncodeSummary) -> Iterator[T]:
    """`it`, adding the time spent waiting for each item to `summary.input_wait_s`."""
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            summary.input_wait_s += time.perf_counter() - t
        yield item


def _unpack(
    samples: list[PreparedSample], ms: Any, flip: bool
) -> tuple[list[PreparedSample], _Moments | None, np.ndarray | None]:
    if ms is None:
        return samples, None, None
    if isinstance(ms, tuple):  # (host tensor, CUDA event of its copy)
        ms[1].synchronize()
        ms = ms[0]
    arr = ms.numpy()
    ok = [j for j, s in enumerate(samples) if s.ok]
    index_of = np.full(len(samples), -1, np.int64)
    index_of[ok] = np.arange(len(ok))
    n_ok = len(ok)
    values, flipped = (arr[:n_ok], arr[n_ok:]) if flip else (arr, None)
    return samples, _Moments(values, index_of), flipped
