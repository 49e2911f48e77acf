"""`WebDatasetSource`: WebDataset tar shards (`{key}.jpg|png|webp` + `{key}.txt|json|cls`), local
or through fsspec (`s3://...`, `https://...`), as random-access records.

Spec (`wds:` forces it): a shard, a glob (`shards/*.tar`), a brace pattern
(`shards/{00000..00099}.tar`, expanded with `braceexpand` as webdataset does), a directory of
`*.tar`, or several of these joined by `::`. Shards are read in the pattern's order (a glob's and a
directory's matches sorted), members in tar order.

Samples follow webdataset's rules (`webdataset.tariterators`): a member `dir/abc.seg.jpg` has key
`dir/abc` and extension `seg.jpg` (everything after the first dot of the file name, lower-cased);
consecutive members with the same key form one sample; `__*__` members are ignored. The first image
extension present is the image, `txt`/`text`/`caption` (or `json` with a `caption`/`text` field)
the caption, `cls` (an integer) the label. Record keys are `{shard file stem}/{key}`.

Listing reads each shard's tar headers once (seeks, no image data). A shard whose headers break off
(truncated or damaged) keeps the samples listed before the damage, plus one sample that is skipped
with the reason; a member whose bytes are cut short or do not decode is skipped with its reason, like
any bad image.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

from lplkit.data.layout import directory_kind
from lplkit.data.sources import (
    ImageSource,
    Record,
    SourceOptions,
    content_fingerprint,
    register_source,
    safe_text,
)
from lplkit.errors import SourceError

__all__ = ["IMAGE_EXTS", "WebDatasetSource", "expand_shards"]

#: image extensions, in the order one is picked when a sample has several (webdataset's imagespecs)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "pbm", "pnm", "bmp", "tif", "tiff", "gif")
_CAPTION_EXTS = ("txt", "text", "caption")
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


def _split_key(name: str) -> tuple[str | None, str | None]:
    """webdataset's `base_plus_ext`: (key, extension) of a member name."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2)) if match else (None, None)


def _is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def expand_shards(spec: str) -> list[str]:
    """Shard URLs of a spec: `::`-separated parts, each brace-expanded, then globbed (local) or
    listed (a directory's `*.tar`); order kept, each glob's matches sorted."""
    from braceexpand import braceexpand

    urls: list[str] = []
    for part in spec.split("::"):
        for item in braceexpand(part):
            local = Path(item).expanduser()
            if not _is_remote(item) and local.is_dir():
                urls.extend(sorted(str(p) for p in local.glob("*.tar")))
            elif not _is_remote(item) and glob.has_magic(item):
                urls.extend(sorted(glob.glob(str(local))))
            else:
                urls.append(item if _is_remote(item) else str(local))
    return urls


def _open(url: str) -> Any:
    if _is_remote(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url, "rb")  # closed by the caller


@dataclass
class _Sample:
    shard: int
    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)  # ext -> (offset, size)
    problem: str | None = None  # the listing broke off here


def _list_shard(index: int, url: str) -> list[_Sample]:
    """The samples of one shard from its tar headers (offsets and sizes, no data read)."""
    samples: list[_Sample] = []
    current: _Sample | None = None
    try:
        with _open(url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile() or _META.search(member.name):
                    continue
                key, ext = _split_key(member.name)
                if key is None or ext is None:
                    continue
                ext = ext.lower()
                if current is None or current.key != key or ext in current.members:
                    current = _Sample(index, key)
                    samples.append(current)
                current.members[ext] = (member.offset_data, member.size)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        after = f" after key {samples[-1].key!r}" if samples else ""
        reason = safe_text(f"shard {url} is damaged{after}: {type(exc).__name__}: {exc}")
        samples.append(_Sample(index, f"#damaged-{len(samples)}", problem=reason))
    return samples


def _read(url: str, offset: int, size: int) -> bytes:
    with _open(url) as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"member cut short: {len(data)} of {size} bytes in {url}")
    return data


@register_source
class WebDatasetSource(ImageSource):
    """WebDataset tar shards (see the module docstring for the spec and the sample rules)."""

    prefix = "wds"
    priority = 25

    def __init__(self, spec: str) -> None:
        self.urls = expand_shards(spec)
        if not self.urls:
            raise SourceError(f"no tar shards match {spec!r}")
        missing = [u for u in self.urls if not _is_remote(u) and not os.path.isfile(u)]
        if missing:
            raise SourceError(
                f"{len(missing)} shard(s) of {spec!r} do not exist, e.g. {missing[0]}"
            )
        self.samples: list[_Sample] = []
        for i, url in enumerate(self.urls):
            self.samples.extend(_list_shard(i, url))
        if not self.samples:
            raise SourceError(f"the shards of {spec!r} hold no samples")
        self.stems = [PurePosixPath(u.rstrip("/")).name.removesuffix(".tar") for u in self.urls]
        self.source_id = spec
        self.split = None
        self.class_names = None
        self.revision = content_fingerprint([(u, _shard_size(u)) for u in self.urls])

    @classmethod
    def matches(cls, spec: str) -> bool:
        if Path(spec).expanduser().is_dir():
            return directory_kind(spec) == "wds"
        return spec.endswith(".tar")  # a missing shard is this source's error, not a hub lookup

    @classmethod
    def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions) -> WebDatasetSource:
        if split is not None:
            raise SourceError("WebDataset shards have no splits: drop --split (pick the shards)")
        return cls(spec)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Record:
        s = self.samples[i]
        url = self.urls[s.shard]
        key = safe_text(f"{self.stems[s.shard]}/{s.key}")
        origin = safe_text(f"{url} member {s.key}")
        if s.problem is not None:
            return Record(key, _failing(s.problem), -1, None, origin)
        image_ext = next((e for e in IMAGE_EXTS if e in s.members), None)
        if image_ext is None:
            return Record(
                key, _failing(f"no image member ({', '.join(s.members)})"), -1, None, origin
            )
        label, caption = _label_and_caption(url, s)
        offset, size = s.members[image_ext]
        return Record(key, _image_opener(url, offset, size), label, caption, origin)


def _shard_size(url: str) -> int:
    if _is_remote(url):
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        return int(fs.size(path))
    return os.path.getsize(url)


def _failing(reason: str) -> Callable[[], Image.Image]:
    def _raise() -> Image.Image:
        raise OSError(reason)

    return _raise


def _image_opener(url: str, offset: int, size: int) -> Callable[[], Image.Image]:
    return lambda: Image.open(io.BytesIO(_read(url, offset, size)))


def _label_and_caption(url: str, s: _Sample) -> tuple[int, str | None]:
    """The `cls` label (-1 if absent or not an integer) and the caption of a sample."""
    label, caption, meta = -1, None, None
    if "cls" in s.members:
        try:
            label = int(_read(url, *s.members["cls"]).decode().strip())
        except (OSError, ValueError):
            label = -1
    ext = next((e for e in _CAPTION_EXTS if e in s.members), None)
    if ext is not None:
        try:
            caption = _read(url, *s.members[ext]).decode("utf-8", "replace")
        except OSError:
            caption = None
    elif "json" in s.members:
        try:
            meta = json.loads(_read(url, *s.members["json"]))
        except (OSError, ValueError):
            meta = None
        if isinstance(meta, dict):
            value = meta.get("caption", meta.get("text"))
            caption = None if value is None else str(value)
    return label, caption
