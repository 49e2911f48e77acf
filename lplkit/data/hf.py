"""Sources backed by Hugging Face `datasets`: hub ids, preset names, and parquet files.

The image column is read undecoded (`Image(decode=False)`): lplkit opens the bytes itself so that a
bad image becomes a skipped row with a reason, not an exception inside `datasets`.
"""

from __future__ import annotations

import glob
import io
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from lplkit.data.layout import directory_kind
from lplkit.data.presets import PRESETS, Preset
from lplkit.data.sources import (
    ImageSource,
    Record,
    SourceOptions,
    content_fingerprint,
    file_size,
    register_source,
    registered_sources,
)
from lplkit.errors import SourceError
from lplkit.hub import hub_cache_dir, hub_failure, is_offline

__all__ = [
    "PRESETS",
    "DatasetsImageFolder",
    "DatasetsSource",
    "DiskSource",
    "HubSource",
    "ParquetSource",
    "Preset",
    "PresetSource",
]

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
        key_root: str | None = None,
    ) -> None:
        from datasets import ClassLabel
        from datasets import Image as ImageFeature

        self.image_column = _image_column(ds.features, image_column)
        self.label_column = _pick_column(ds.features, label_column, _LABEL_NAMES, "label")
        self.caption_column = _pick_column(ds.features, caption_column, _CAPTION_NAMES, "caption")
        self.columns = list(ds.features)  # all of them, for a missing-caption error
        if isinstance(ds.features[self.image_column], ImageFeature):
            ds = ds.cast_column(self.image_column, ImageFeature(decode=False))
        label_feat = ds.features.get(self.label_column) if self.label_column else None
        self.class_names = list(label_feat.names) if isinstance(label_feat, ClassLabel) else None
        columns = [c for c in (self.image_column, self.label_column, self.caption_column) if c]
        self.ds = ds.select_columns(columns)
        self.source_id, self.split, self.revision = source_id, split, revision
        # files read by path (imagefolder): keys are their paths relative to this folder
        self.key_root = None if key_root is None else os.path.abspath(key_root)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Record:
        row = self.ds[int(i)]
        label = row.get(self.label_column) if self.label_column else None
        caption = row.get(self.caption_column) if self.caption_column else None
        key = self._path_key(row[self.image_column]) or f"{self.split or 'data'}/{i:09d}"
        return Record(
            key,
            _bytes_opener(row[self.image_column]),
            -1 if label is None else int(label),
            None if caption is None else str(caption),
            f"{self.source_id} [{self.split}] row {i}",
        )

    def _path_key(self, cell: Any) -> str | None:
        path = cell.get("path") if isinstance(cell, dict) else None
        if self.key_root is None or not path:
            return None
        rel = os.path.relpath(os.path.abspath(path), self.key_root)
        return None if rel.startswith("..") else Path(rel).as_posix()


def _load_dataset(path: str, *, hub: bool = False, **kwargs: Any) -> Any:
    """`datasets.load_dataset`, every failure one line (`hub`: `path` is a hub dataset id)."""
    import datasets

    try:
        return datasets.load_dataset(path, **kwargs)
    except Exception as exc:
        if hub:
            msg = hub_failure(exc, repo=path, kind="dataset", revision=kwargs.get("revision"))
            raise SourceError(f"cannot load dataset {path!r}: {msg}") from None
        if isinstance(exc, FileNotFoundError | ValueError | ConnectionError | OSError):
            text = " ".join(str(exc).split())[:400]
            raise SourceError(f"cannot load dataset {path!r}: {text}") from None
        raise


def _datasets_cache() -> Path:
    """The `datasets` cache (HF_DATASETS_CACHE, else HF_HOME/datasets), without importing datasets
    unless it already is."""

    if "datasets" in sys.modules:
        return Path(sys.modules["datasets"].config.HF_DATASETS_CACHE)
    from huggingface_hub import constants

    return Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")


def _check_hub_reachable(repo: str, revision: str | None) -> None:
    """Fail in one line, before `load_dataset` (which retries an unreachable hub for ~25 s), when the
    hub cannot serve `repo`: offline (HF_HUB_OFFLINE=1) with no copy in the hub or datasets cache, or
    online when one quick metadata request fails (no network, no such repo)."""

    if is_offline():
        in_hub = (Path(hub_cache_dir()) / f"datasets--{repo.replace('/', '--')}").is_dir()
        in_datasets = (_datasets_cache() / repo.replace("/", "___")).is_dir()
        if in_hub or in_datasets:
            return  # load_dataset reads the cached copy
        from huggingface_hub.errors import OfflineModeIsEnabled

        exc = OfflineModeIsEnabled(f"{repo} is not cached")
        msg = hub_failure(exc, repo=repo, kind="dataset", revision=revision)
        raise SourceError(f"cannot load dataset {repo!r}: {msg}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError

    try:
        HfApi().dataset_info(repo, revision=revision, timeout=10)
    except GatedRepoError:
        return  # load_dataset says what to do (log in) with the user's token
    except Exception as exc:
        msg = hub_failure(exc, repo=repo, kind="dataset", revision=revision)
        raise SourceError(f"cannot load dataset {repo!r}: {msg}") from None


def preflight(spec: str, revision: str | None = None) -> None:
    """The hub check of a preset or hub-id `spec`, without importing `datasets` or torch, so that
    `lplkit encode` reports an unreachable or uncached hub dataset at once; other specs: nothing."""

    head, sep, rest = spec.partition(":")
    if sep and not os.path.exists(spec):
        if head == "hub":
            repo = rest
        elif head == "preset" and rest in PRESETS:
            repo = PRESETS[rest].hub_id
        else:
            return
    else:
        kind = next((c for c in registered_sources() if c.matches(spec)), None)
        if kind is PresetSource:
            repo = PRESETS[spec].hub_id
        elif kind is HubSource:
            repo = spec
        else:
            return
    _check_hub_reachable(repo, revision)


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
        _check_hub_reachable(spec, options.revision)
        ds = _load_dataset(spec, hub=True, name=config_name, split=split, revision=options.revision)
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


@register_source
class PresetSource(HubSource):
    """A preset name from `PRESETS` (`imagenet` -> `ILSVRC/imagenet-1k`)."""

    prefix = "preset"
    priority = 10

    @classmethod
    def matches(cls, spec: str) -> bool:
        return spec in PRESETS and not os.path.exists(spec)

    @classmethod
    def from_spec(
        cls, spec: str, *, split: str | None, options: SourceOptions, config_name: str | None = None
    ) -> HubSource:
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
    """Files of a parquet file or glob (a directory goes through `_split_files`)."""
    return sorted(glob.glob(str(Path(spec).expanduser()), recursive=True))


def _pick_split(where: str, splits: dict[str, Any], split: str | None) -> str:
    """The requested split, else `train`, else the only one; an absent one lists those present."""
    names = ", ".join(sorted(splits))
    if split is None:
        if "train" in splits or len(splits) == 1:
            return "train" if "train" in splits else next(iter(splits))
        raise SourceError(f"{where} has splits {names}: pass --split")
    if split not in splits:
        raise SourceError(f"{where} has no split {split!r}; its splits: {names}")
    return split


def _split_files(root: Path, split: str | None) -> tuple[str, list[str]]:
    """(split, its parquet files) of a directory, with the split names `datasets` gives the files
    (hub layout `data/{split}-XXXXX-of-XXXXX.parquet`, `{split}/*.parquet`, `{split}.parquet`, ...;
    any other layout is one `train` split)."""
    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns

    try:
        patterns = get_data_patterns(str(root))
        resolved = DataFilesDict.from_patterns(
            patterns, base_path=str(root), allowed_extensions=[".parquet"]
        )
    except (EmptyDatasetError, FileNotFoundError):
        raise SourceError(f"no parquet files under {root}") from None
    splits = {str(k): sorted(str(f) for f in v) for k, v in resolved.items() if len(v)}
    if not splits:
        raise SourceError(f"no parquet files under {root}")
    name = _pick_split(str(root), splits, split)
    return name, splits[name]


@register_source
class ParquetSource(DatasetsSource):
    """Parquet files (a file, a glob, or a directory in the hub layout) with an image column, read
    through datasets' `parquet` builder. A directory's splits are named as `datasets` names them;
    `--split` selects one (default `train`). Rows are in sorted-file order, then row order."""

    prefix = "parquet"
    priority = 30

    @classmethod
    def matches(cls, spec: str) -> bool:
        if Path(spec).expanduser().is_dir():
            return directory_kind(spec) == "parquet"
        return (spec.endswith(".parquet") or "*" in spec) and bool(_parquet_files(spec))

    @classmethod
    def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions) -> ParquetSource:
        root = Path(spec).expanduser()
        if root.is_dir():
            split, files = _split_files(root, split)
        else:
            files = _parquet_files(spec)
        if not files:
            raise SourceError(f"no parquet files match {spec!r}")
        ds = _load_dataset("parquet", data_files={split or "train": files}, split=split or "train")
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


def _disk_fingerprint(root: Path) -> str | None:
    """The `_fingerprint`(s) `datasets` wrote into state.json: they change with the content."""

    prints = []
    for state in sorted(root.rglob("state.json")):
        try:
            prints.append(str(json.loads(state.read_text()).get("_fingerprint")))
        except (OSError, ValueError, AttributeError):
            continue
    return "datasets-fingerprint:" + "+".join(prints) if prints else None


@register_source
class DiskSource(DatasetsSource):
    """A `Dataset.save_to_disk` or `DatasetDict.save_to_disk` directory (`datasets.load_from_disk`);
    for a DatasetDict `--split` selects the split (default `train`)."""

    prefix = "disk"
    priority = 15

    @classmethod
    def matches(cls, spec: str) -> bool:
        return directory_kind(spec) == "disk"

    @classmethod
    def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions) -> DiskSource:
        import datasets

        root = Path(spec).expanduser()
        try:
            loaded = datasets.load_from_disk(str(root))
        except (FileNotFoundError, ValueError, OSError) as exc:
            text = " ".join(str(exc).split())[:300]
            raise SourceError(f"cannot load the save_to_disk directory {root}: {text}") from None
        if isinstance(loaded, datasets.DatasetDict):
            split = _pick_split(str(root), dict(loaded), split)
            ds = loaded[split]
        else:
            ds = loaded
            split = split or (str(ds.split) if ds.split is not None else None)
        return cls(
            ds,
            source_id=str(root.resolve()),
            split=split,
            revision=_disk_fingerprint(root),
            image_column=options.image_column,
            label_column=options.label_column,
            caption_column=options.caption_column,
        )


class DatasetsImageFolder(DatasetsSource):
    """A folder in `datasets`' imagefolder layout (metadata.jsonl / metadata.csv with `file_name`,
    split folders), read with `load_dataset("imagefolder", data_dir=...)`: captions and other
    metadata columns are kept, split folders are splits (`--split`, default `train`), and keys are
    the files' paths relative to the folder. Built by `ImageFolderSource.from_spec`."""

    @classmethod
    def from_spec(
        cls, spec: str, *, split: str | None, options: SourceOptions
    ) -> DatasetsImageFolder:
        from datasets.data_files import DataFilesDict, get_data_patterns

        root = Path(spec).expanduser().resolve()
        patterns = get_data_patterns(str(root))
        splits = {str(k): v for k, v in DataFilesDict.from_patterns(patterns, str(root)).items()}
        split = _pick_split(str(root), splits, split)
        ds = _load_dataset("imagefolder", data_dir=str(root), split=split)
        files = sorted(str(f) for f in splits[split])
        revision = content_fingerprint([(os.path.relpath(f, root), file_size(f)) for f in files])
        return cls(
            ds,
            source_id=str(root),
            split=split,
            revision=revision,
            image_column=options.image_column,
            label_column=options.label_column,
            caption_column=options.caption_column,
            key_root=str(root),
        )
