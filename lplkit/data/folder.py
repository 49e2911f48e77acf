"""`ImageFolderSource`: a local directory of images, with or without class sub-folders.

A folder in `datasets`' imagefolder layout (a metadata.jsonl/.csv with `file_name`, or split folders
`train/`, `validation/`, ...) is read by `datasets` instead (`DatasetsImageFolder`: captions kept,
split folders are splits, not classes).

Odd entries never stop the listing: a dangling symlink, a symlink loop, a FIFO or a device named
`x.jpg` is listed and becomes a skipped row with its reason when opened (a FIFO is never opened for
reading, so it cannot hang the encode). A name that is not valid UTF-8 gets a percent-encoded key
(`key_of`, reversed by `path_bytes_of_key`): index.parquet holds UTF-8 text only.
"""

from __future__ import annotations

import io
import os
import stat
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from lplkit.data.hf import DatasetsImageFolder
from lplkit.data.layout import directory_kind
from lplkit.data.sources import (
    ImageSource,
    Record,
    SourceOptions,
    content_fingerprint,
    file_size,
    register_source,
    safe_text,
)
from lplkit.errors import SourceError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderSource", "key_of", "path_bytes_of_key"]

#: File extensions an image folder source picks up (case-insensitive), as torchvision's ImageFolder.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(root: Path) -> list[Path]:
    """All image files under `root`, recursively, in sorted order; hidden entries are ignored
    (`.ipynb_checkpoints` is a classic phantom class); symlinked directories are followed once."""
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink cycle
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
    return found


def key_of(rel: str) -> str:
    """The record key of a relative posix path: the path itself when it is valid UTF-8, else its
    file-system bytes percent-encoded (`urllib.parse.quote`, `/` kept), so the key is ASCII text and
    the name can be recovered (`path_bytes_of_key`)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, held by Python as lone surrogates
        return urllib.parse.quote(os.fsencode(rel), safe="/")
    return rel


def path_bytes_of_key(key: str) -> bytes:
    """The file-system bytes of the relative path a key names (inverse of `key_of`): a key whose
    percent-decoding is not valid UTF-8 was percent-encoded, any other key is the path as text."""
    raw = urllib.parse.unquote_to_bytes(key)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    return key.encode("utf-8")


def _open_path(path: str) -> Callable[[], Image.Image]:
    def _open() -> Image.Image:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused right after
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise OSError(f"not a regular file ({kind})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        # PIL never closes a file object it was handed (only files it opened itself), so the
        # bytes are read here and the descriptor closed at once (it leaked until collection)
        with os.fdopen(fd, "rb") as f:
            return Image.open(io.BytesIO(f.read()))

    return _open


@register_source
class ImageFolderSource(ImageSource):
    """A local directory of images.

    With class sub-folders (`root/<class>/**/<img>`), labels are the classes' indices in sorted
    name order, as torchvision's `ImageFolder`; a flat folder gives label -1 to every image. Files are
    listed recursively in sorted path order, so positions are deterministic.
    """

    prefix = "folder"
    priority = 20

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise SourceError(f"image folder {self.root} does not exist or is not a directory")
        subdirs = sorted(
            p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        loose = sorted(p for p in self.root.iterdir() if p.is_file() and _is_image(p.name))
        per_class = [(d.name, _walk_images(d)) for d in subdirs]
        per_class = [(name, files) for name, files in per_class if files]
        if per_class and loose:
            raise SourceError(
                f"{self.root} mixes {len(loose)} images at its top level with class folders "
                f"({', '.join(n for n, _ in per_class[:3])}...): move the loose images into a class "
                "folder, or point --dataset at a folder with only one layout"
            )
        self.paths: list[Path] = []
        self.labels: list[int] = []
        if per_class:
            self.class_names = [safe_text(name) for name, _ in per_class]
            for label, (_, files) in enumerate(per_class):
                self.paths.extend(files)
                self.labels.extend([label] * len(files))
        else:
            self.class_names = None
            self.paths = _walk_images(self.root)
            self.labels = [-1] * len(self.paths)
        if not self.paths:
            raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}")
        self.keys = [key_of(p.relative_to(self.root).as_posix()) for p in self.paths]
        self.source_id = str(self.root)
        self.split = None
        self.revision = content_fingerprint(
            [(k, file_size(p)) for k, p in zip(self.keys, self.paths, strict=True)]
        )

    @classmethod
    def matches(cls, spec: str) -> bool:
        return directory_kind(spec) in ("folder", "imagefolder")

    @classmethod
    def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions) -> ImageSource:
        if directory_kind(spec) == "imagefolder":
            return DatasetsImageFolder.from_spec(spec, split=split, options=options)
        if split is not None:
            raise SourceError(
                f"{spec} is a folder of class sub-folders without splits; drop --split (split "
                "folders train/, validation/, ... or a metadata.jsonl make --split apply)"
            )
        return cls(spec)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Record:
        path = str(self.paths[i])
        return Record(self.keys[i], _open_path(path), self.labels[i], None, safe_text(path))
