"""Every common dataset layout, written by the library that produces it, encoded end to end: labels,
class names, captions, keys and split selection are checked against the data that was written.

Layouts: hub parquet (`Dataset.to_parquet` into `data/{split}-XXXXX-of-XXXXX.parquet` and
`{split}/*.parquet`), `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, `datasets` imagefolder with
metadata.jsonl / metadata.csv and split folders, WebDataset shards written by `webdataset.TarWriter`.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers.stores import read_store
from PIL import Image

from lplkit.data import resolve_source
from lplkit.encode import EncodeConfig, encode_dataset
from lplkit.errors import SourceError

CLASSES = ["apple", "banana", "cherry"]
RES = 16


def _image(seed: int, size=(20, 18)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _rows(split: str, n: int) -> dict[str, list]:
    """Rows of one split: distinct sizes (a check of which image was read), labels, captions."""
    base = {"train": 0, "validation": 100, "test": 200}[split]
    return {
        "image": [_image(base + i, (20 + i, 18 + (base // 100))) for i in range(n)],
        "label": [(base + i) % 3 for i in range(n)],
        "caption": [f"{split} caption {i}" for i in range(n)],
    }


def _dataset(split: str, n: int):
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=CLASSES),
            "caption": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(_rows(split, n), features=features, split=split)


SPLITS = {"train": 4, "validation": 3}


def _encode(spec: str, out: Path, vae: Path, **kw):
    cfg = EncodeConfig(dataset=spec, out=str(out), vae=str(vae), res=RES, shard_size=4,
                       batch_size=4, workers=0, device="cpu", **kw)  # fmt: skip
    summary = encode_dataset(cfg)
    return summary, read_store(out)


def _check_against(store: dict, split: str, *, classes=CLASSES) -> None:
    """The store's rows are `split`'s rows in order: sizes, labels, captions, class names."""
    rows = _rows(split, SPLITS[split])
    index = store["index"]
    assert [r["status"] for r in index] == ["ok"] * len(rows["image"])
    assert [(r["orig_width"], r["orig_height"]) for r in index] == [im.size for im in rows["image"]]
    assert [r["label"] for r in index] == rows["label"]
    assert store["labels"].tolist() == rows["label"]
    assert [r["caption"] for r in index] == rows["caption"]
    m = store["manifest"]
    assert m["classes"] == classes and m["source"]["split"] == split


def test_split_keywords_are_datasets_own():
    from datasets.data_files import SPLIT_KEYWORDS

    from lplkit.data.layout import SPLIT_KEYWORDS as ours

    assert {str(k): tuple(v) for k, v in SPLIT_KEYWORDS.items()} == ours


# -- parquet in the hub layout ------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["data/{split}-00000-of-00001.parquet", "{split}/0000.parquet"])
def test_hub_parquet_layout_selects_the_split(layout, tmp_path, tiny_vae_dir):
    root = tmp_path / "hub"
    for split, n in SPLITS.items():
        path = root / layout.format(split=split)
        path.parent.mkdir(parents=True, exist_ok=True)
        _dataset(split, n).to_parquet(str(path))
    (root / "README.md").write_text("---\nlicense: mit\n---\n")
    spec = f"parquet:{root}"
    summary, store = _encode(spec, tmp_path / "v.zarr", tiny_vae_dir, split="validation")
    assert summary.total == SPLITS["validation"]  # not every split: no train/validation mix
    _check_against(store, "validation")
    _, store = _encode(str(root), tmp_path / "t.zarr", tiny_vae_dir)  # detected; default train
    _check_against(store, "train")
    with pytest.raises(SourceError, match=r"no split 'test'; its splits: train, validation"):
        resolve_source(str(root), "test")


# -- save_to_disk ---------------------------------------------------------------------------------


def test_save_to_disk_dataset_dict_and_dataset(tmp_path, tiny_vae_dir):
    import datasets

    dd = datasets.DatasetDict({s: _dataset(s, n) for s, n in SPLITS.items()})
    dd.save_to_disk(str(tmp_path / "dd"))
    _, store = _encode(str(tmp_path / "dd"), tmp_path / "dd.zarr", tiny_vae_dir, split="validation")
    _check_against(store, "validation")
    with pytest.raises(SourceError, match=r"no split 'test'; its splits: train, validation"):
        resolve_source(f"disk:{tmp_path / 'dd'}", "test")

    _dataset("train", SPLITS["train"]).save_to_disk(str(tmp_path / "one"))
    _, store = _encode(str(tmp_path / "one"), tmp_path / "one.zarr", tiny_vae_dir)
    _check_against(store, "train")


# -- datasets imagefolder with metadata ------------------------------------------------------------


def _write_imagefolder(root: Path, metadata: str) -> None:

    for split, n in SPLITS.items():
        (root / split).mkdir(parents=True)
        rows = _rows(split, n)
        lines = []
        for i, (im, cap) in enumerate(zip(rows["image"], rows["caption"], strict=True)):
            name = f"img_{i}.png"
            im.save(root / split / name)
            lines.append({"file_name": name, "caption": cap})
        if metadata == "jsonl":
            (root / split / "metadata.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in lines)
            )
        else:
            import csv

            with open(root / split / "metadata.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=["file_name", "caption"])
                w.writeheader()
                w.writerows(lines)


@pytest.mark.parametrize("metadata", ["jsonl", "csv"])
def test_imagefolder_metadata_keeps_captions_split_folders_are_splits(
    metadata, tmp_path, tiny_vae_dir
):
    import datasets

    root = tmp_path / "if"
    _write_imagefolder(root, metadata)
    oracle = datasets.load_dataset("imagefolder", data_dir=str(root), split="validation")
    _, store = _encode(str(root), tmp_path / "s.zarr", tiny_vae_dir, split="validation")
    rows = _rows("validation", SPLITS["validation"])
    index = store["index"]
    assert [r["caption"] for r in index] == list(oracle["caption"]) == rows["caption"]
    assert [r["key"] for r in index] == [f"validation/img_{i}.png" for i in range(3)]
    assert [(r["orig_width"], r["orig_height"]) for r in index] == [im.size for im in rows["image"]]
    # no class invented from the split folder
    assert store["labels"].tolist() == [-1] * 3 and store["manifest"]["classes"] is None
    assert store["manifest"]["source"]["split"] == "validation"


def test_split_folders_with_class_folders(tmp_path, tiny_vae_dir):
    """train/<class>/x.png: the split folder is a split, the class folders are the labels."""
    for split, n in SPLITS.items():
        for i in range(n):
            cls = CLASSES[i % 2]
            (tmp_path / "sc" / split / cls).mkdir(parents=True, exist_ok=True)
            _image(i).save(tmp_path / "sc" / split / cls / f"{split}_{i}.png")
    _, store = _encode(str(tmp_path / "sc"), tmp_path / "s.zarr", tiny_vae_dir)
    assert store["manifest"]["classes"] == CLASSES[:2]
    by_key = {r["key"]: r["label"] for r in store["index"]}
    assert by_key == {f"train/{CLASSES[i % 2]}/train_{i}.png": i % 2 for i in range(4)}


# -- WebDataset shards -----------------------------------------------------------------------------


def _write_shards(root: Path) -> list[dict]:
    """Two shards by webdataset's own writer; returns the samples in order."""
    import webdataset as wds

    root.mkdir()
    samples = []
    for shard in range(2):
        with wds.TarWriter(str(root / f"shard-{shard:05d}.tar")) as sink:
            for i in range(3):
                key = f"s{shard}_{i:03d}"
                im = _image(10 * shard + i, (20 + i, 18 + shard))
                ext = "jpg" if i % 2 else "png"
                buf = io.BytesIO()
                im.save(buf, format="JPEG" if ext == "jpg" else "PNG")
                sample = {"__key__": key, ext: buf.getvalue(), "cls": str(i % 3).encode()}
                if shard == 0:
                    sample["txt"] = f"caption {key}".encode()
                else:
                    sample["json"] = f'{{"caption": "json caption {key}"}}'.encode()
                sink.write(sample)
                samples.append({"key": f"shard-{shard:05d}/{key}", "size": im.size,
                                "label": i % 3, "caption": ("caption " if shard == 0 else "json caption ") + key})  # fmt: skip
    return samples


def test_webdataset_shards_brace_pattern(tmp_path, tiny_vae_dir):
    import webdataset as wds

    samples = _write_shards(tmp_path / "shards")
    spec = str(tmp_path / "shards" / "shard-{00000..00001}.tar")
    # webdataset's own reader sees the same samples in the same order
    theirs = [s["__key__"] for s in wds.WebDataset(spec, shardshuffle=False)]
    assert theirs == [s["key"].split("/", 1)[1] for s in samples]
    _, store = _encode(spec, tmp_path / "w.zarr", tiny_vae_dir)
    index = store["index"]
    assert [r["key"] for r in index] == [s["key"] for s in samples]
    assert [r["label"] for r in index] == [s["label"] for s in samples]
    assert [r["caption"] for r in index] == [s["caption"] for s in samples]
    assert [(r["orig_width"], r["orig_height"]) for r in index] == [s["size"] for s in samples]
    assert all(r["status"] == "ok" for r in index) and store["manifest"]["classes"] is None
    # a directory of shards and wds: name the same samples
    assert len(resolve_source(str(tmp_path / "shards"))) == len(samples)
    assert len(resolve_source(f"wds:{tmp_path / 'shards' / '*.tar'}")) == len(samples)


def test_webdataset_corrupt_member_and_truncated_shard_are_skipped(tmp_path, tiny_vae_dir):
    import webdataset as wds

    root = tmp_path / "bad"
    root.mkdir()
    with wds.TarWriter(str(root / "a.tar")) as sink:
        buf = io.BytesIO()
        _image(1).save(buf, format="PNG")
        sink.write({"__key__": "good", "png": buf.getvalue(), "cls": b"2"})
        sink.write({"__key__": "corrupt", "jpg": b"not a jpeg at all", "cls": b"1"})
        sink.write({"__key__": "textonly", "txt": b"no image here"})
    # a shard cut off in the middle of its second member's data
    with wds.TarWriter(str(root / "b.tar")) as sink:
        for key in ("first", "second"):
            buf = io.BytesIO()
            _image(len(key), (64, 64)).save(buf, format="PNG")
            sink.write({"__key__": key, "png": buf.getvalue()})
    data = (root / "b.tar").read_bytes()
    with tarfile.open(root / "b.tar") as tar:
        second = next(m for m in tar.getmembers() if m.name.startswith("second"))
    (root / "b.tar").write_bytes(data[: second.offset_data + 100])
    summary, store = _encode(f"wds:{root}", tmp_path / "w.zarr", tiny_vae_dir)
    rows = {r["key"]: r for r in store["index"]}
    assert rows["a/good"]["status"] == "ok" and rows["a/good"]["label"] == 2
    assert rows["a/corrupt"]["status"] == "skipped" and "unreadable" in rows["a/corrupt"]["reason"]
    assert "no image member" in rows["a/textonly"]["reason"]
    assert rows["b/first"]["status"] == "ok"
    # the member whose bytes were cut, then one row for the rest of the shard that cannot be listed
    assert rows["b/second"]["status"] == "skipped" and "cut short" in rows["b/second"]["reason"]
    damaged = [r for k, r in rows.items() if k.startswith("b/#damaged")]
    assert len(damaged) == 1 and "is damaged after key 'second'" in damaged[0]["reason"]
    assert summary.encoded == 2 and summary.skipped == 4


# -- hub failures ----------------------------------------------------------------------------------


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """This process's hub and datasets caches pointed at empty folders."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    return tmp_path


def test_offline_preset_with_empty_cache_is_one_line(empty_caches, tiny_vae_dir, capsys):
    from helpers.cli import run_cli

    code, out, err = run_cli(["encode", "--dataset", "imagenet", "--res", "16", "--vae",
                              str(tiny_vae_dir), "--out", str(empty_caches / "s.zarr")], capsys)  # fmt: skip
    assert code == 3 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "{" not in err, err
    assert "ILSVRC/imagenet-1k is not in the local hub cache" in lines[0]
    assert "HF_HUB_OFFLINE=1" in lines[0] and "local copy" in lines[0]


def test_unreachable_hub_is_one_request_not_a_retry_storm(monkeypatch):
    """Online mode with no network: one metadata request fails, `load_dataset` (which would retry
    for ~25 s) is never called."""
    import importlib

    import datasets
    from huggingface_hub import HfApi

    # the HTTP library huggingface_hub uses (httpx2 in huggingface_hub 2.x, httpx in 1.x)
    http = next(
        importlib.import_module(m) for m in ("httpx2", "httpx") if importlib.util.find_spec(m)
    )
    calls = []

    def unreachable(self, repo_id, **kw):
        calls.append(repo_id)
        raise http.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(HfApi, "dataset_info", unreachable)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("load_dataset ran"))
    with pytest.raises(SourceError, match=r"the hub cannot be reached.*HF_HUB_OFFLINE=1") as exc:
        resolve_source("cifar10")
    assert calls == ["uoft-cs/cifar10"] and "\n" not in str(exc.value)


def test_gated_dataset_says_log_in(monkeypatch):
    import datasets
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub import HfApi

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(HfApi, "dataset_info", lambda self, repo_id, **kw: None)

    def gated(*a, **k):  # the error datasets raises for a gated repo without a token
        raise DatasetNotFoundError(
            "Dataset 'ILSVRC/imagenet-1k' is a gated dataset on the Hub. You must be "
            "authenticated to access it."
        )

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(SourceError, match=r"is gated: accept its terms.*HF_TOKEN"):
        resolve_source("imagenet")


# -- class names ------------------------------------------------------------------------------------


def test_class_names_in_manifest_reader_and_info(image_folder, tiny_vae_dir, tmp_path, capsys):
    from helpers.cli import run_cli

    from lplkit.store import LatentStore

    _, store = _encode(str(image_folder), tmp_path / "s.zarr", tiny_vae_dir)
    names = sorted(p.name for p in image_folder.iterdir())  # torchvision ImageFolder's rule
    assert store["manifest"]["classes"] == names == ["ant", "bee", "cat"]
    assert LatentStore.open(str(tmp_path / "s.zarr")).classes == names
    code, _, err = run_cli(["info", str(tmp_path / "s.zarr")], capsys)  # the table is on stderr
    assert code == 0 and "3: 0=ant, 1=bee, 2=cat" in " ".join(err.split())
    code, out, _ = run_cli(["info", str(tmp_path / "s.zarr"), "--json"], capsys)
    assert code == 0 and json.loads(out)["manifest"]["classes"] == names


def test_webdataset_shards_through_fsspec(tmp_path):
    """Remote shards (any fsspec URL; here fsspec's in-memory file system) list and read alike."""
    import fsspec

    from lplkit.data.sources import open_image

    samples = _write_shards(tmp_path / "shards")
    fs = fsspec.filesystem("memory")
    for p in sorted((tmp_path / "shards").glob("*.tar")):
        fs.pipe(f"/lplkit-test/{p.name}", p.read_bytes())
    try:
        src = resolve_source("wds:memory://lplkit-test/shard-{00000..00001}.tar")
        assert [src[i].key for i in range(len(src))] == [s["key"] for s in samples]
        assert [src[i].caption for i in range(len(src))] == [s["caption"] for s in samples]
        assert [open_image(src[i]).size for i in range(len(src))] == [s["size"] for s in samples]
    finally:
        fs.rm("/lplkit-test", recursive=True)
