"""`ImageFolderSource`: a local directory of images, with or without class sub-folders."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from lplkit.data.sources import (
    ImageSource,
    Record,
    SourceOptions,
    content_fingerprint,
    register_source,
)
from lplkit.errors import SourceError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderSource"]

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


def _open_path(path: str) -> Callable[[], Image.Image]:
    return lambda: Image.open(path)


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
            self.class_names = [name for name, _ in per_class]
            for label, (_, files) in enumerate(per_class):
                self.paths.extend(files)
                self.labels.extend([label] * len(files))
        else:
            self.class_names = None
            self.paths = _walk_images(self.root)
            self.labels = [-1] * len(self.paths)
        if not self.paths:
            raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {self.root}")
        self.keys = [p.relative_to(self.root).as_posix() for p in self.paths]
        self.source_id = str(self.root)
        self.split = None
        self.revision = content_fingerprint(
            [(k, p.stat().st_size) for k, p in zip(self.keys, self.paths, strict=True)]
        )

    @classmethod
    def matches(cls, spec: str) -> bool:
        path = Path(spec).expanduser()
        if not path.is_dir():
            return False
        return not any(path.glob("*.parquet"))

    @classmethod
    def from_spec(
        cls, spec: str, *, split: str | None, options: SourceOptions
    ) -> ImageFolderSource:
        return cls(spec)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Record:
        path = str(self.paths[i])
        return Record(self.keys[i], _open_path(path), self.labels[i], None, path)
