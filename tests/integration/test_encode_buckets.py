"""`lplkit encode --buckets` end to end (issue #25) on a folder of mixed-shape images with the tiny
VAE (f = 4, so bucket sides are multiples of 8 with --patch-multiple 2).

Oracles: each image's bucket by the nearest log aspect ratio computed here in floats; its pixels by
PIL's resize + center crop written out here (helpers: never the code under test), encoded by the
VAE called directly; the store's files read with zarr/pyarrow; text by a square store's rows of the
same captions (the square path is checked against transformers in test_text_encoders.py).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from helpers.cli import run_cli
from PIL import Image

RES = 32
SIZES = [(24, 48), (32, 32), (48, 24)]  # (W, H); sorted by aspect: the store's bucket order
SPEC = "48x24,32x32,24x48"
#: file -> (width, height); "bad.png" is not an image (skipped, kept in the squarest bucket)
IMAGES = {
    "a.png": (80, 40), "b.png": (40, 90), "c.png": (50, 50), "d.png": (70, 36),
    "e.png": (33, 64), "f.png": (64, 58), "g.png": (100, 30), "h.png": (30, 100),
    "i.png": (45, 40), "j.png": (60, 31), "k.png": (41, 80),
}  # fmt: skip


def write_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, (w, h) in IMAGES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "bad.png").write_bytes(b"not an image")
    return root


def nearest(w: int, h: int) -> int:
    d = [abs(math.log(W / H) - math.log(w / h)) for W, H in SIZES]
    return int(np.argmin(d))


def pil_resize_crop(img: Image.Image, target: tuple[int, int]) -> np.ndarray:
    W, H = target
    while img.size[0] >= 2 * W and img.size[1] >= 2 * H:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    s = max(W / img.size[0], H / img.size[1])
    img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), resample=Image.BICUBIC)
    left, top = (img.size[0] - W) // 2, (img.size[1] - H) // 2
    return np.asarray(img.crop((left, top, left + W, top + H)))


def encode(images: Path, out: Path, vae: Path, *extra: str, capsys=None) -> tuple[int, str, str]:
    args = ["encode", "--dataset", str(images), "--res", str(RES), "--vae", str(vae), "--out",
            str(out), "--shard-size", "2", "--batch-size", "3", "--workers", "0", "--device",
            "cpu", *extra]  # fmt: skip
    return run_cli(args, capsys)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("mixed") / "img")


@pytest.fixture(scope="module")
def store(images, tiny_vae_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bk") / "s.zarr"
    code, _, _ = encode(images, out, tiny_vae_dir, "--buckets", SPEC, "--flip")
    assert code == 0
    return out


def test_rows_grouped_by_nearest_bucket_in_source_order(store):
    index = pq.read_table(store / "index.parquet").to_pylist()
    keys = sorted([*IMAGES, "bad.png"])  # the folder source's order
    want = {k: nearest(*IMAGES[k]) if k in IMAGES else 1 for k in keys}
    expected = [k for b in range(3) for k in keys if want[k] == b]
    assert [r["key"] for r in index] == expected
    assert [r["bucket"] for r in index] == [want[k] for k in expected]
    assert [r["position"] for r in index] == list(range(len(keys)))
    manifest = zarr.open_group(str(store), mode="r").attrs["lplkit"]
    rows = [sum(1 for k in keys if want[k] == b) for b in range(3)]
    assert manifest["buckets"] == [
        {"id": b, "size": list(SIZES[b]), "latent_shape": [4, SIZES[b][1] // 4, SIZES[b][0] // 4],
         "rows": rows[b], "start": sum(rows[:b])}
        for b in range(3)
    ]  # fmt: skip
    assert manifest["counts"] == {"total": 12, "ok": 11, "skipped": 1}


def test_stored_latents_are_the_vae_of_pil_resize_and_crop(store, images, tiny_vae_dir):
    import torch

    from lplkit.autoencoders.loading import encode_moments, load_autoencoder
    from lplkit.store import LatentStore

    vae = load_autoencoder(str(tiny_vae_dir))
    s = LatentStore.open(store)
    index = s.index.to_pylist()
    for row in index:
        if row["status"] != "ok":
            continue
        b = row["bucket"]
        pixels = pil_resize_crop(Image.open(images / row["key"]).convert("RGB"), SIZES[b])
        x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            mean, std = encode_moments(vae, torch.cat([x, x.flip(-1)]))
        view, local = s.bucket_view(b), row["position"] - s.buckets[b].start
        got_mean, got_std = view.read([local])
        np.testing.assert_allclose(got_mean[0], mean[0].numpy(), atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(got_std[0], std[0].numpy(), atol=2e-3, rtol=2e-3)
        flip_mean, _ = view.read([local], flip=True)
        np.testing.assert_allclose(flip_mean[0], mean[1].numpy(), atol=2e-3, rtol=2e-3)
        assert row["crop_box"][2] - row["crop_box"][0] == SIZES[b][0]


def test_info_json_lists_buckets_and_verify_catches_a_flipped_byte(store, images, tiny_vae_dir,
                                                                   tmp_path, capsys):  # fmt: skip
    import shutil

    copy = tmp_path / "s.zarr"
    shutil.copytree(store, copy)
    code, out, _ = run_cli(["info", str(copy), "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    rows = [sum(1 for k in IMAGES if nearest(*IMAGES[k]) == b) for b in range(3)]
    assert [(b["size"], b["rows"], b["counts"]["ok"]) for b in info["buckets"]] == [
        ([24, 48], rows[0], rows[0]),
        ([32, 32], rows[1] + 1, rows[1]),
        ([48, 24], rows[2], rows[2]),
    ]  # bad.png: a skipped row of the square bucket
    assert rows[2] >= 4  # the shard flipped below holds two ok rows
    assert "buckets/2/moments_flip" in info["arrays"]
    code, _, err = run_cli(["info", str(copy)], capsys)  # the tables go to stderr
    assert code == 0 and "aspect-ratio buckets" in err and "48 x 24" in err
    before = np.asarray(zarr.open_group(str(copy / "buckets/2"), mode="r")["moments"][:])
    assert run_cli(["verify", str(copy)], capsys)[0] == 0
    shard = copy / "buckets/2/moments/c/1/0/0/0/0"  # bucket 2, shard 1 (rows 2-3: both ok)
    data = bytearray(shard.read_bytes())
    data[20] ^= 0x10
    shard.write_bytes(bytes(data))
    code, out, _ = run_cli(["verify", str(copy), "--json"], capsys)
    report = json.loads(out)
    assert code == 4 and report["buckets"]["2"]["bad_shards"] == [1]
    assert [p["kind"] for p in report["problems"]] == ["checksum"]
    assert report["problems"][0]["message"].startswith("bucket 2 (48x24): shard 1")
    assert run_cli(["verify", str(copy), "--repair"], capsys)[0] == 4
    code, _, err = encode(images, copy, tiny_vae_dir, "--buckets", SPEC, "--flip", capsys=capsys)
    assert code == 0, err
    assert run_cli(["verify", str(copy)], capsys)[0] == 0
    after = np.asarray(zarr.open_group(str(copy / "buckets/2"), mode="r")["moments"][:])
    assert after.tobytes() == before.tobytes()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--buckets", "36x24,32x32"], "bucket 36x24 is not a multiple of 8"),
        (["--buckets", "area", "--bucket-step", "12"], "--bucket-step 12 is not a multiple of 8"),
        (["--buckets", "48x24,32x32", "--patch-multiple", "4"], "is not a multiple of 16"),
        (["--buckets", "48by24"], "not WIDTHxHEIGHT"),
    ],
)
def test_bad_buckets_are_refused_before_anything_is_written(images, tiny_vae_dir, tmp_path,
                                                            capsys, flags, message):  # fmt: skip
    out = tmp_path / "never.zarr"
    code, _, err = encode(images, out, tiny_vae_dir, *flags, capsys=capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_square_store_has_no_buckets(images, tiny_vae_dir, tmp_path):
    from lplkit.store import LatentStore

    out = tmp_path / "sq.zarr"
    assert encode(images, out, tiny_vae_dir)[0] == 0
    manifest = zarr.open_group(str(out), mode="r").attrs["lplkit"]
    assert "buckets" not in manifest and "bucket" not in manifest
    assert "bucket" not in pq.read_table(out / "index.parquet").column_names
    assert not (out / "buckets").exists()
    s = LatentStore.open(out)
    assert [b.size for b in s.buckets] == [(RES, RES)] and s.latent_shape == (4, 8, 8)


def test_text_encoder_rows_follow_the_buckets(tmp_path, tiny_vae_dir):
    import helpers.text_models as tm

    from lplkit.store import LatentStore

    root = tmp_path / "img"
    write_folder(root)
    with open(root / "metadata.jsonl", "w") as f:
        for i, name in enumerate(sorted([*IMAGES, "bad.png"])):
            f.write(json.dumps({"file_name": name, "text": f"caption {i} of {name}"}) + "\n")
    model, tok = tm.t5_model(0)
    t5 = tm.save(model, tok, tmp_path / "t5")
    flags = ["--text-encoder", str(t5), "--text-max-tokens", "8"]
    assert encode(root, tmp_path / "b.zarr", tiny_vae_dir, "--buckets", SPEC, *flags)[0] == 0
    assert encode(root, tmp_path / "sq.zarr", tiny_vae_dir, *flags)[0] == 0
    square, bucketed = LatentStore.open(tmp_path / "sq.zarr"), LatentStore.open(tmp_path / "b.zarr")
    by_key = {k: p for p, k in enumerate(square.index_column("key").to_pylist())}
    assert list(bucketed.text_encoders) == ["t5"]
    for b in bucketed.buckets:
        view = bucketed.bucket_view(b.id)
        keys = view.index_column("key").to_pylist()
        got = view.read_text(np.arange(b.rows), "t5")["t5"]
        want = square.read_text([by_key[k] for k in keys], "t5")["t5"]
        for a in ("states", "mask"):
            np.testing.assert_array_equal(got[a].float().numpy(), want[a].float().numpy())
    from lplkit.store import verify_store

    assert verify_store(str(tmp_path / "b.zarr")).ok
