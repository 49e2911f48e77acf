"""Every caption source reaches the cached text arrays at the right rows (issue #22): a shuffled
parquet table (caption column found automatically), save_to_disk, WebDataset .txt/.json members,
OpenMoji's Unicode names; a bad image keeps its row (zeros), flip copies share their row's text.
The oracle is a direct transformers call on the caption the test itself gave each key."""

from __future__ import annotations

import io
import json
import unicodedata

import helpers.text_models as tm
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.stores import read_store
from PIL import Image

from lplkit.encode import EncodeConfig, encode_dataset
from lplkit.errors import ConfigError

L = 7


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    m, tok = tm.t5_model(3)
    return tm.save(m, tok, tmp_path_factory.mktemp("t5") / "tiny-t5")


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (18, 20 + seed % 5, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _oracle(t5_dir, captions: list[str]) -> dict[str, np.ndarray]:
    import torch
    from transformers import T5EncoderModel, T5Tokenizer

    model = T5EncoderModel.from_pretrained(t5_dir).eval()
    tok = T5Tokenizer.from_pretrained(t5_dir)
    t = tok(captions, padding="max_length", max_length=L, truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = model(t.input_ids, attention_mask=t.attention_mask).last_hidden_state
    return {"states": states.numpy(), "mask": t.attention_mask.numpy()}


def _encode_and_check(spec, out, vae, t5_dir, expected: dict[str, str | None], **kw):
    """Encode with the T5 encoder, then check each key's text row against the oracle."""
    cfg = EncodeConfig(dataset=spec, out=str(out), vae=vae, res=16, shard_size=4, batch_size=4,
                       workers=0, device="cpu", text_encoder=[str(t5_dir)], text_max_tokens=L,
                       text_dtype="float32", **kw)  # fmt: skip
    summary = encode_dataset(cfg)
    assert summary.text[0]["completed"]
    store = read_store(out)
    import zarr

    group = zarr.open_group(str(out), mode="r")
    states = np.asarray(group["text/tiny-t5/states"][:])
    mask = np.asarray(group["text/tiny-t5/mask"][:])
    rows = store["index"]
    ok = [r for r in rows if r["status"] == "ok"]
    want = _oracle(t5_dir, [expected[r["key"]] or "" for r in ok])
    got = np.stack([states[r["position"]] for r in ok])
    np.testing.assert_allclose(got, want["states"], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.stack([mask[r["position"]] for r in ok]), want["mask"])
    for r in rows:
        if r["status"] != "ok":
            assert not states[r["position"]].any() and not mask[r["position"]].any()
    entry = store["manifest"]["text_encoders"]["tiny-t5"]
    assert entry["counts"]["empty"] == sum(1 for r in ok if not expected[r["key"]])
    return store


def test_parquet_shuffled_with_a_bad_image_and_flips(tmp_path, t5_dir, tiny_vae_dir):
    order = np.random.default_rng(1).permutation(9)  # rows not in key order
    keys = [f"img{i}" for i in order]
    captions = {f"img{i}": (None if i == 2 else f"a {'red' if i % 2 else 'blue'} cat {i}")
                for i in order}  # fmt: skip
    images = [{"bytes": b"broken" if i == 5 else _png(int(i)), "path": f"img{i}.png"}
              for i in order]  # fmt: skip
    table = pa.table({"image": images, "prompt": [captions[k] for k in keys], "name": keys})
    pq.write_table(table, tmp_path / "data.parquet")
    # keys of rows read from bytes: "data/{row:09d}" (docs/data-sources.md): row j is keys[j]
    expected = {f"data/{j:09d}": captions[k] for j, k in enumerate(keys)}
    store = _encode_and_check(f"parquet:{tmp_path / 'data.parquet'}", tmp_path / "p.zarr",
                              str(tiny_vae_dir), t5_dir, expected, flip=True)  # fmt: skip
    assert "moments_flip" in store and sum(r["status"] != "ok" for r in store["index"]) == 1


def test_parquet_without_a_caption_column_lists_the_columns(tmp_path, t5_dir, tiny_vae_dir):
    table = pa.table({"image": [{"bytes": _png(0), "path": "a.png"}], "name": ["a"]})
    pq.write_table(table, tmp_path / "data.parquet")
    cfg = EncodeConfig(dataset=f"parquet:{tmp_path / 'data.parquet'}", out=str(tmp_path / "o"),
                       vae=str(tiny_vae_dir), res=16, workers=0, device="cpu",
                       text_encoder=[str(t5_dir)])  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"no caption column .*columns: image, name; pass --caption-column"
    ):
        encode_dataset(cfg)
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_save_to_disk(tmp_path, t5_dir, tiny_vae_dir):
    import datasets

    captions = [f"a photo of a dog {i}" if i != 1 else "" for i in range(5)]
    ds = datasets.Dataset.from_dict(
        {"image": [Image.open(io.BytesIO(_png(i))) for i in range(5)], "text": captions},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "disk"))
    expected = {f"train/{i:09d}": c for i, c in enumerate(captions)}
    # the source's keys for rows read from bytes: "{split}/{row:09d}" (docs/data-sources.md)
    store = _encode_and_check(str(tmp_path / "disk"), tmp_path / "d.zarr", str(tiny_vae_dir),
                              t5_dir, {**expected, **{f"data/{i:09d}": c for i, c in
                                                      enumerate(captions)}})  # fmt: skip
    assert len(store["index"]) == 5


def test_webdataset_txt_and_json_members(tmp_path, t5_dir, tiny_vae_dir):
    import webdataset as wds

    (tmp_path / "w").mkdir()
    expected = {}
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / "w" / f"shard-{shard:05d}.tar")) as sink:
            for i in range(3):
                key = f"s{shard}_{i}"
                caption = f"the sky {shard} tree {i}"
                sample = {"__key__": key, "png": _png(10 * shard + i)}
                if shard == 0:
                    sample["txt"] = caption.encode()
                else:
                    sample["json"] = json.dumps({"caption": caption}).encode()
                sink.write(sample)
                expected[f"shard-{shard:05d}/{key}"] = caption
    _encode_and_check(f"wds:{tmp_path / 'w'}/shard-{{00000..00001}}.tar", tmp_path / "w.zarr",
                      str(tiny_vae_dir), t5_dir, expected)  # fmt: skip


def test_openmoji_unicode_names(tmp_path, t5_dir):
    def name(key: str) -> str | None:
        return unicodedata.name(chr(int(key[2:], 16)), "").lower() or None

    from lplkit.data.openmoji import OpenMojiSource

    source = OpenMojiSource(16, split="all")
    expected = {source[i].key: name(source[i].key) for i in range(6)}
    _encode_and_check("openmoji", tmp_path / "o.zarr", None, t5_dir, expected, limit=6,
                      split="all")  # fmt: skip
