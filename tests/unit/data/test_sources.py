"""Source registry: image folders, parquet, hub/preset wiring, custom sources, bad-image reasons."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.images import write_image_folder
from PIL import Image

from lplkit.data import ImageSource, Record, register_source, resolve_source
from lplkit.data import sources as sources_mod
from lplkit.data.folder import ImageFolderSource
from lplkit.data.hf import HubSource, ParquetSource
from lplkit.data.sources import open_image
from lplkit.errors import BadImageError, SourceError


def test_folder_labels_follow_sorted_class_names(image_folder):
    src = resolve_source(str(image_folder))
    assert isinstance(src, ImageFolderSource)
    assert src.class_names == ["ant", "bee", "cat"] and src.num_classes == 3
    # what torchvision's ImageFolder does, written out: sorted classes, sorted files per class
    expected = []
    for label, cls in enumerate(sorted(p.name for p in image_folder.iterdir())):
        for f in sorted((image_folder / cls).iterdir()):
            expected.append((f"{cls}/{f.name}", label))
    got = [(src[i].key, src[i].label) for i in range(len(src))]
    assert got == expected and len(src) == 12


def test_folder_recursive_hidden_and_flat(tmp_path):
    root = write_image_folder(tmp_path / "r", {"b": 1, "a/deep": 2})
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (9, 9)).save(root / ".ipynb_checkpoints" / "x.png")
    (root / "a" / "notes.txt").write_text("not an image")
    src = resolve_source(f"folder:{root}")
    assert src.class_names == ["a", "b"]
    assert [src[i].key for i in range(len(src))] == [
        "a/deep/img_000.png",
        "a/deep/img_001.jpg",
        "b/img_000.png",
    ]
    assert [src[i].label for i in range(3)] == [0, 0, 1]

    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("z.png", "a.png", "m.jpg"):
        Image.new("RGB", (9, 9)).save(flat / name)
    src = resolve_source(str(flat))
    assert [src[i].key for i in range(3)] == ["a.png", "m.jpg", "z.png"]
    assert [src[i].label for i in range(3)] == [-1, -1, -1] and src.num_classes == 0


def test_folder_errors(tmp_path):
    mixed = write_image_folder(tmp_path / "mixed", {"cls": 1})
    Image.new("RGB", (9, 9)).save(mixed / "loose.png")
    with pytest.raises(SourceError, match="mixes 1 images"):
        resolve_source(str(mixed))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        resolve_source(str(tmp_path / "empty"))
    with pytest.raises(SourceError, match="cannot resolve"):
        resolve_source(str(tmp_path / "does-not-exist"))


def test_folder_revision_tracks_content(tmp_path):
    root = write_image_folder(tmp_path / "r", {"a": 2})
    rev = resolve_source(str(root)).revision
    assert resolve_source(str(root)).revision == rev
    Image.new("RGB", (9, 9)).save(root / "a" / "new.png")
    assert resolve_source(str(root)).revision != rev


def test_folder_image_decodes_to_the_file(image_folder):
    src = resolve_source(str(image_folder))
    rec = src[0]
    np.testing.assert_array_equal(
        np.asarray(open_image(rec)), np.asarray(Image.open(image_folder / rec.key))
    )


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_parquet_source_with_struct_image_column(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (12, 10 + i, 3), dtype=np.uint8) for i in range(5)]
    images = pa.array(
        [{"bytes": _png(a), "path": f"img{i}.png"} for i, a in enumerate(arrays)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    table = pa.table(
        {"image": images, "label": [3, 1, 4, 1, 5], "caption": ["a", "b", None, "d", "e"]}
    )
    pq.write_table(table.slice(0, 3), tmp_path / "part-0.parquet")
    pq.write_table(table.slice(3), tmp_path / "part-1.parquet")
    src = resolve_source(str(tmp_path / "*.parquet"))
    assert isinstance(src, ParquetSource) and len(src) == 5
    assert [src[i].label for i in range(5)] == [3, 1, 4, 1, 5]
    assert [src[i].caption for i in range(5)] == ["a", "b", None, "d", "e"]
    for i, a in enumerate(arrays):
        np.testing.assert_array_equal(np.asarray(open_image(src[i])), a)
    assert resolve_source(str(tmp_path)).revision == src.revision  # directory form, same files


def test_parquet_binary_column_by_name(tmp_path):
    arr = np.full((9, 9, 3), 7, np.uint8)
    pq.write_table(pa.table({"jpg": [_png(arr)], "txt": ["hi"]}), tmp_path / "d.parquet")
    src = resolve_source(str(tmp_path / "d.parquet"), image_column="jpg")
    rec = src[0]
    assert rec.label == -1 and rec.caption == "hi"
    np.testing.assert_array_equal(np.asarray(open_image(rec)), arr)
    with pytest.raises(SourceError, match="image column 'nope' not found"):
        resolve_source(str(tmp_path / "d.parquet"), image_column="nope")


def test_preset_maps_to_hub_dataset(monkeypatch):
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])}
    )
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": _png(np.zeros((9, 9, 3), np.uint8)), "path": None}], "label": [1]},
        features=features,
    )
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    # the offline "not in the cache" check is tested in test_dataset_layouts
    monkeypatch.setattr("lplkit.data.hf._check_hub_reachable", lambda repo, revision: None)
    src = resolve_source("imagenet", revision="abc123")
    assert calls == [("ILSVRC/imagenet-1k", {"name": None, "split": "train", "revision": "abc123"})]
    assert isinstance(src, HubSource)
    assert src.describe() == {
        "id": "ILSVRC/imagenet-1k",
        "split": "train",
        "revision": "abc123",
        "count": 1,
    }
    assert src.class_names == ["x", "y"] and src[0].label == 1
    assert open_image(src[0]).size == (9, 9)
    resolve_source("someone/some-dataset", split="validation")
    assert calls[-1][0] == "someone/some-dataset" and calls[-1][1]["split"] == "validation"


def test_custom_source_is_one_small_class(monkeypatch):
    monkeypatch.setattr(sources_mod, "_REGISTRY", list(sources_mod._REGISTRY))

    @register_source
    class Solid(ImageSource):
        prefix = "solid"
        priority = 0

        def __init__(self, n: int) -> None:
            self.n, self.source_id, self.class_names = n, "solid", None

        @classmethod
        def matches(cls, spec: str) -> bool:
            return spec == "solid-colors"

        @classmethod
        def from_spec(cls, spec, *, split, options):
            return cls(int(spec) if spec.isdigit() else options.res or 3)

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> Record:
            return Record(f"c{i}", Image.new("RGB", (8, 8), (i, i, i)), label=i)

    assert len(resolve_source("solid:5")) == 5
    assert len(resolve_source("solid-colors", res=7)) == 7
    assert open_image(resolve_source("solid:5")[2]).getpixel((0, 0)) == (2, 2, 2)


def test_open_image_reasons(tmp_path):
    missing = Record("gone.png", lambda: Image.open(tmp_path / "gone.png"))
    with pytest.raises(BadImageError, match="missing file"):
        open_image(missing)
    (tmp_path / "junk.png").write_bytes(b"definitely not an image")
    junk = Record("junk.png", lambda: Image.open(tmp_path / "junk.png"))
    with pytest.raises(BadImageError, match="unreadable"):
        open_image(junk)


def test_keys_are_relative_and_never_escape(image_folder):
    src = resolve_source(str(image_folder))
    for i in range(len(src)):
        key = src[i].key
        assert not Path(key).is_absolute() and ".." not in Path(key).parts
