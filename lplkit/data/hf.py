"""Sources backed by Hugging Face `datasets`: hub ids, preset names, and parquet files.

The image column is read undecoded (`Image(decode=False)`): lplkit opens the bytes itself so that a
bad image becomes a skipped row with a reason, not an exception inside `datasets`.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from lplkit.data.sources import (
    ImageSource,
    Record,
    SourceOptions,
    content_fingerprint,
    register_source,
)
from lplkit.errors import SourceError

__all__ = ["PRESETS", "DatasetsSource", "HubSource", "ParquetSource", "Preset", "PresetSource"]

_LABEL_NAMES = ("label", "labels", "class", "cls", "target", "fine_label")
_CAPTION_NAMES = ("caption", "captions", "text", "txt", "prompt", "sentence")


def _image_column(features: Any, requested: str | None) -> str:
    from datasets import Image as ImageFeature

    if requested is not None:
        if requested not in features:
            raise SourceError(f"image column {requested!r} not found; columns: {list(features)}")
        return requested
    for name, feat in features.items():
        if isinstance(feat, ImageFeature):
            return name
    for name, feat in features.items():  # pyarrow-written struct<bytes, path> or plain binary
        if (isinstance(feat, dict) and "bytes" in feat) or getattr(feat, "dtype", None) in (
            "binary",
            "large_binary",
        ):
            return name
    raise SourceError(f"no image column found among {list(features)}; pass --image-column")


def _pick_column(features: Any, requested: str | None, candidates: tuple[str, ...], what: str):
    if requested is not None:
        if requested not in features:
            raise SourceError(f"{what} column {requested!r} not found; columns: {list(features)}")
        return requested
    return next((c for c in candidates if c in features), None)


def _bytes_opener(value: Any) -> Callable[[], Image.Image]:
    """Opener for a datasets image cell: {"bytes", "path"} dict, raw bytes, or a path string."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, bytes | bytearray | memoryview):
        data, path = bytes(value), None
    else:
        data, path = None, value
    if data is not None:
        return lambda: Image.open(io.BytesIO(data))
    if path:
        return lambda: Image.open(path)

    def _missing() -> Image.Image:
        raise OSError("the image cell holds neither bytes nor a path")

    return _missing


class DatasetsSource(ImageSource):
    """A `datasets.Dataset` with an image column (left undecoded: lplkit decodes and checks it)."""

    def __init__(
        self,
        ds: Any,
        *,
        source_id: str,
        split: str | None,
        revision: str | None,
        image_column: str | None = None,
        label_column: str | None = None,
        caption_column: str | None = None,
    ) -> None:
        from datasets import ClassLabel
        from datasets import Image as ImageFeature

        self.image_column = _image_column(ds.features, image_column)
        self.label_column = _pick_column(ds.features, label_column, _LABEL_NAMES, "label")
        self.caption_column = _pick_column(ds.features, caption_column, _CAPTION_NAMES, "caption")
        if isinstance(ds.features[self.image_column], ImageFeature):
            ds = ds.cast_column(self.image_column, ImageFeature(decode=False))
        label_feat = ds.features.get(self.label_column) if self.label_column else None
        self.class_names = list(label_feat.names) if isinstance(label_feat, ClassLabel) else None
        columns = [c for c in (self.image_column, self.label_column, self.caption_column) if c]
        self.ds = ds.select_columns(columns)
        self.source_id, self.split, self.revision = source_id, split, revision

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Record:
        row = self.ds[int(i)]
        label = row.get(self.label_column) if self.label_column else None
        caption = row.get(self.caption_column) if self.caption_column else None
        key = f"{self.split or 'data'}/{i:09d}"
        return Record(
            key,
            _bytes_opener(row[self.image_column]),
            -1 if label is None else int(label),
            None if caption is None else str(caption),
            f"{self.source_id} [{self.split}] row {i}",
        )


def _load_dataset(path: str, **kwargs: Any) -> Any:
    import datasets

    try:
        return datasets.load_dataset(path, **kwargs)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise SourceError(f"cannot load dataset {path!r} ({kwargs}): {exc}") from None


@register_source
class HubSource(DatasetsSource):
    """A Hugging Face hub dataset id (`org/name`), loaded non-streaming; split defaults to `train`.

    The revision recorded is the one asked for, or the commit the hub resolved (datasets' builder
    hash), so a later resume can detect a dataset that moved.
    """

    prefix = "hub"
    priority = 90

    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec.count("/") == 1 and not os.path.exists(spec) and not spec.startswith((".", "/"))

    @classmethod
    def from_spec(
        cls, spec: str, *, split: str | None, options: SourceOptions, config_name: str | None = None
    ) -> HubSource:
        split = split or "train"
        ds = _load_dataset(spec, name=config_name, split=split, revision=options.revision)
        return cls(
            ds,
            source_id=spec if config_name is None else f"{spec}:{config_name}",
            split=split,
            revision=options.revision or _resolved_revision(ds),
            image_column=options.image_column,
            label_column=options.label_column,
            caption_column=options.caption_column,
        )


def _resolved_revision(ds: Any) -> str | None:
    """The commit/fingerprint a hub load resolved to (the cache path carries the builder hash)."""
    files = getattr(ds, "cache_files", None) or []
    if files:
        parts = Path(files[0]["filename"]).parts
        return parts[-2] if len(parts) >= 2 else None
    return getattr(ds, "_fingerprint", None)


@dataclass(frozen=True)
class Preset:
    """A short name for a hub dataset and the columns to read."""

    hub_id: str
    image_column: str
    label_column: str | None
    default_split: str = "train"
    config_name: str | None = None
    note: str = ""


#: Preset names -> hub datasets (parquet-backed on the hub; ImageNet is gated: accept its terms and
#: `hf auth login` first).
PRESETS: dict[str, Preset] = {
    "imagenet": Preset("ILSVRC/imagenet-1k", "image", "label", note="ILSVRC-2012, 1000 classes"),
    "cifar10": Preset("uoft-cs/cifar10", "img", "label", note="32x32, 10 classes"),
    "cifar100": Preset("uoft-cs/cifar100", "img", "fine_label", note="32x32, 100 fine classes"),
    "mnist": Preset("ylecun/mnist", "image", "label", note="28x28 grayscale digits"),
}


@register_source
class PresetSource(HubSource):
    """A preset name from `PRESETS` (`imagenet` -> `ILSVRC/imagenet-1k`)."""

    prefix = "preset"
    priority = 10

    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec in PRESETS and not os.path.exists(spec)

    @classmethod
    def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions) -> HubSource:
        if spec not in PRESETS:
            raise SourceError(f"unknown preset {spec!r}; presets: {', '.join(sorted(PRESETS))}")
        p = PRESETS[spec]
        options = replace(
            options,
            image_column=options.image_column or p.image_column,
            label_column=options.label_column or p.label_column,
        )
        return HubSource.from_spec(
            p.hub_id, split=split or p.default_split, options=options, config_name=p.config_name
        )


def _parquet_files(spec: str) -> list[str]:
    path = Path(spec).expanduser()
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*.parquet"))
    return sorted(glob.glob(str(path), recursive=True))


@register_source
class ParquetSource(DatasetsSource):
    """Parquet files (a file, a glob, or a directory of them) with an image column, read through
    datasets' `parquet` builder. Rows are in sorted-file order, then row order."""

    prefix = "parquet"
    priority = 30

    @classmethod
    def matches(cls, spec: str) -> bool:
        return bool(_parquet_files(spec)) and (
            spec.endswith(".parquet") or Path(spec).expanduser().is_dir() or "*" in spec
        )

    @classmethod
    def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions) -> ParquetSource:
        files = _parquet_files(spec)
        if not files:
            raise SourceError(f"no parquet files match {spec!r}")
        ds = _load_dataset("parquet", data_files={"train": files}, split="train")
        revision = content_fingerprint([(os.path.abspath(f), os.path.getsize(f)) for f in files])
        return cls(
            ds,
            source_id=spec,
            split=split,
            revision=revision,
            image_column=options.image_column,
            label_column=options.label_column,
            caption_column=options.caption_column,
        )
