"""Image sources: a registry that turns a `--dataset` spec into an indexable list of records.

A source is one small class registered with `@register_source`. `resolve_source(spec)` picks the
first class (by `priority`, then registration order) whose `prefix` is the spec's `prefix:` or whose
`matches(spec)` is true, and builds it. Built-in sources, in the order they are tried:

| spec | source |
| --- | --- |
| `imagenet`, `cifar10`, ... (see `PRESETS`), `openmoji` | the hub dataset it maps to / the OpenMoji renderer |
| a `save_to_disk` directory (`Dataset` or `DatasetDict`) | `DiskSource` (`datasets.load_from_disk`) |
| a directory of images (class sub-folders) | `ImageFolderSource` (class sub-folders -> labels) |
| a directory in `datasets`' imagefolder layout (metadata.jsonl/.csv, split folders) | `DatasetsImageFolder` |
| `*.parquet` files, globs, or a directory (hub layout `data/{split}-*.parquet`) | `ParquetSource` |
| `*.tar` shards, brace patterns `shards/{00000..00099}.tar`, a directory of them | `WebDatasetSource` |
| `org/name` (anything else with a slash) | `HubSource` (`datasets.load_dataset`, non-streaming) |

Directories are told apart by `lplkit.data.layout.directory_kind`. Prefixes force a kind:
`folder:PATH`, `parquet:GLOB`, `disk:PATH`, `wds:PATTERN`, `hub:ORG/NAME`, `preset:NAME`.

The built-in kinds live in `lplkit.data.folder` and `lplkit.data.hf`; they, and optional source
modules such as `lplkit.data.openmoji`, are imported by `registered_sources()`. A new kind is one
class: subclass `ImageSource`, set `prefix`/`priority`, implement `matches`, `from_spec`, `__len__`
and `__getitem__`, and decorate it with `@register_source`.

Record keys are identifiers for the index only (relative posix paths or `split/position`); nothing is
ever written to a path built from a key.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from lplkit.data.presets import PRESETS
from lplkit.errors import BadImageError, SourceError

__all__ = [
    "ImageSource",
    "LimitedSource",
    "Record",
    "SourceOptions",
    "content_fingerprint",
    "file_size",
    "open_image",
    "register_source",
    "registered_sources",
    "resolve_source",
    "safe_text",
]


@dataclass(frozen=True)
class Record:
    """One sample of a source.

    `image` is a PIL image opened lazily (`Image.open` reads only the header) or, better for files
    that may be unreadable, a zero-argument callable returning one: `open_image` calls it inside its
    error handling, so a bad file becomes a skipped row with a reason instead of a crash.
    """

    key: str
    image: Image.Image | Callable[[], Image.Image] = field(repr=False)
    label: int = -1
    caption: str | None = None
    origin: str = ""  # where it came from, for error messages (a file path or "dataset row i")

    def describe(self) -> str:
        """`origin` if known, else the key (used to name the file in errors)."""
        return self.origin or self.key


@dataclass(frozen=True)
class SourceOptions:
    """Optional knobs a source may use (each source ignores the ones it has no use for)."""

    image_column: str | None = None
    label_column: str | None = None
    caption_column: str | None = None
    revision: str | None = None  # hub revision (branch, tag or commit)
    res: int | None = None  # target resolution, for sources that render their images


def safe_text(text: str) -> str:
    """`text` with undecodable file-name bytes (lone surrogates) as `\\xNN`: printable, and
    storable in index.parquet (UTF-8 only)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def open_image(record: Record) -> Image.Image:
    """Open a record's image, turning every open-time failure into `BadImageError(reason)`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = record.image
            return image() if callable(image) else image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(safe_text(f"decompression bomb: {exc}")) from None
    except FileNotFoundError as exc:
        raise BadImageError(safe_text(f"missing file: {exc}")) from None
    except (OSError, SyntaxError, ValueError, TypeError) as exc:
        raise BadImageError(safe_text(f"unreadable: {exc}")) from None


class ImageSource(ABC):
    """An indexable, deterministic sequence of `Record`s.

    Subclasses set `source_id`, `split`, `revision` and `class_names` in `__init__` and implement
    `__len__` / `__getitem__`. `revision` pins the content (hub commit, or a fingerprint of the file
    list) so that a resumed encode can refuse a source that changed underneath it.
    """

    #: explicit spec prefix (`folder` for `folder:PATH`), or None
    prefix: ClassVar[str | None] = None
    #: lower is tried first by `resolve_source`
    priority: ClassVar[int] = 50

    source_id: str
    split: str | None = None
    revision: str | None = None
    class_names: list[str] | None = None

    @classmethod
    def matches(cls, spec: str) -> bool:
        """Whether an un-prefixed spec names this kind of source."""
        return False

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions) -> ImageSource:
        """Build the source from the spec (prefix removed), the split and the options."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, i: int) -> Record: ...

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when unlabeled or unknown)."""
        return len(self.class_names) if self.class_names else 0

    def describe(self) -> dict[str, Any]:
        """The manifest's `source` entry."""
        return {
            "id": self.source_id,
            "split": self.split,
            "revision": self.revision,
            "count": len(self),
        }


_REGISTRY: list[type[ImageSource]] = []
# Sources living in optional modules; imported (if present) before resolving a spec.
_PLUGIN_MODULES = (
    "lplkit.data.folder",
    "lplkit.data.hf",
    "lplkit.data.wds",
    "lplkit.data.openmoji",
)


class LimitedSource(ImageSource):
    """The first `n` positions of another source (`--limit`); its `describe()` count is `n`."""

    def __init__(self, inner: ImageSource, n: int) -> None:
        self.inner, self.n = inner, min(n, len(inner))
        self.source_id, self.split = inner.source_id, inner.split
        self.revision, self.class_names = inner.revision, inner.class_names

    @classmethod
    def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions) -> ImageSource:
        raise SourceError("LimitedSource wraps another source; it is not resolved from a spec")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Record:
        if not 0 <= i < self.n:
            raise IndexError(f"position {i} out of range for the first {self.n} samples")
        return self.inner[i]


class SubsetSource(ImageSource):
    """Positions `positions` of another source, in that order (an aspect-ratio bucket's images:
    position i of the subset is `positions[i]` of `inner`)."""

    def __init__(self, inner: ImageSource, positions: Sequence[int]) -> None:
        self.inner, self.positions = inner, [int(p) for p in positions]
        self.source_id, self.split = inner.source_id, inner.split
        self.revision, self.class_names = inner.revision, inner.class_names

    @classmethod
    def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions) -> ImageSource:
        raise SourceError("SubsetSource wraps another source; it is not resolved from a spec")

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> Record:
        return self.inner[self.positions[i]]


def register_source(cls: type[ImageSource]) -> type[ImageSource]:
    """Class decorator adding a source kind to the registry."""
    if cls not in _REGISTRY:
        _REGISTRY.append(cls)
    return cls


def registered_sources() -> list[type[ImageSource]]:
    """Registered source classes in the order `resolve_source` tries them."""
    for name in _PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    order = {cls: i for i, cls in enumerate(_REGISTRY)}
    return sorted(_REGISTRY, key=lambda c: (c.priority, order[c]))


def resolve_source(spec: str, split: str | None = None, **options: Any) -> ImageSource:
    """Turn a `--dataset` spec into a source (see the module docstring for the rules).

    Args:
        spec: preset name, directory, parquet file/glob, hub id, or `kind:value`.
        split: dataset split (hub/parquet/presets); ignored by folders.
        options: fields of `SourceOptions` (`image_column`, `label_column`, `caption_column`,
            `revision`, `res`); None means auto.
    """
    opts = SourceOptions(**options)
    sources = registered_sources()
    head, sep, rest = spec.partition(":")
    if sep and not os.path.exists(spec):
        for cls in sources:
            if cls.prefix == head:
                return cls.from_spec(rest, split=split, options=opts)
    for cls in sources:
        if cls.matches(spec):
            return cls.from_spec(spec, split=split, options=opts)
    raise SourceError(
        f"cannot resolve dataset {spec!r}: not a preset ({', '.join(sorted(_preset_names()))}), an "
        "existing image folder, parquet file/glob/directory, save_to_disk directory, WebDataset "
        "tar shards, or a hub id 'org/name' (force a kind with folder:, parquet:, disk:, wds:, hub:)"
    )


def file_size(path: str | os.PathLike[str]) -> int:
    """Size for a content fingerprint; -1 for an entry that cannot be stat'ed (a dangling symlink,
    a loop): it stays listed, and opening it gives the skip reason."""
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def content_fingerprint(entries: list[tuple[str, int]]) -> str:
    """sha256 over (relative path, size) pairs: changes when files are added, removed or replaced."""
    h = hashlib.sha256()
    for rel, size in entries:
        h.update(f"{rel}\0{size}\n".encode())
    return "files-sha256:" + h.hexdigest()[:32]


def _preset_names() -> list[str]:
    return [*PRESETS, "openmoji"]
