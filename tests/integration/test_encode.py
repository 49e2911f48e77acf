"""End-to-end `encode`: stored moments vs a direct `vae.encode` of the ADM-cropped image, flips,
labels, refusal of another autoencoder, bad images, parquet sources, the CLI's --json."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers.images import reference_crop, write_image_folder
from helpers.stores import read_store
from PIL import Image

from lplkit.encode import EncodeConfig, encode_dataset
from lplkit.errors import StoreMismatchError


def direct_moments(vae_dir: Path, arr_HWC: np.ndarray, flip: bool = False):
    """Posterior (mean, std) from diffusers directly, one image at a time."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    x = torch.from_numpy(arr_HWC.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]
    if flip:
        x = x.flip(-1)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    return dist.mean[0].numpy(), dist.std[0].numpy()


def _cfg(dataset, out, vae, **kw) -> EncodeConfig:
    base = dict(res=32, shard_size=4, batch_size=3, workers=0, device="cpu")
    return EncodeConfig(dataset=str(dataset), out=str(out), vae=str(vae), **{**base, **kw})


def test_shards_sized_in_mib(image_folder, tiny_vae_dir, tmp_path):
    # 4x8x8 fp16 without flips: 1028 B a row (moments 1024 + label 4); 0.004 MiB = 4194 B -> 4 rows
    out = tmp_path / "s.zarr"
    summary = encode_dataset(_cfg(image_folder, out, tiny_vae_dir, shard_size=None, shard_mb=0.004))
    assert (summary.shards_total, summary.shards_written, summary.completed) == (3, 3, True)
    m = read_store(out)["manifest"]
    assert (m["shard_size"], m["chunk_size"], m["layout_version"]) == (4, 4, 3)
    assert m["geometry"] == {"rule": "bytes", "shard_mb": 0.004, "chunk_bytes": 1 << 20,
                             "row_bytes": 1028}  # fmt: skip


def test_moments_flips_labels_match_direct_encode(image_folder, tiny_vae_dir, tmp_path):
    out = tmp_path / "s.zarr"
    summary = encode_dataset(_cfg(image_folder, out, tiny_vae_dir, flip=True, workers=1))
    assert (summary.total, summary.encoded, summary.skipped) == (12, 12, 0)
    assert (summary.shards_written, summary.completed) == (3, True)
    store = read_store(out)
    assert store["moments"].dtype == np.float16 and store["moments"].shape == (12, 2, 4, 8, 8)
    classes = sorted(p.name for p in image_folder.iterdir())
    for row in store["index"]:
        i = row["position"]
        path = image_folder / row["key"]
        assert row["label"] == classes.index(Path(row["key"]).parts[0]) == store["labels"][i]
        img = Image.open(path).convert("RGB")
        assert (row["orig_width"], row["orig_height"]) == img.size and row["status"] == "ok"
        crop = reference_crop(img, 32)
        for flip, name in ((False, "moments"), (True, "moments_flip")):
            mean, std = direct_moments(tiny_vae_dir, crop, flip=flip)
            got = store[name][i].astype(np.float32)
            np.testing.assert_allclose(got[0], mean, rtol=1e-3, atol=2e-3)
            np.testing.assert_allclose(got[1], std, rtol=1e-3, atol=2e-3)
    ae = store["manifest"]["autoencoder"]
    assert ae["scaling_factor"] == 0.5 and ae["class"] == "AutoencoderKL"


def test_float32_store_and_limit(image_folder, tiny_vae_dir, tmp_path):
    out = tmp_path / "f32.zarr"
    summary = encode_dataset(_cfg(image_folder, out, tiny_vae_dir, dtype="float32", limit=5))
    assert summary.total == 5
    store = read_store(out)
    assert store["moments"].dtype == np.float32 and len(store["index"]) == 5
    row = store["index"][4]
    crop = reference_crop(Image.open(image_folder / row["key"]).convert("RGB"), 32)
    mean, std = direct_moments(tiny_vae_dir, crop)
    np.testing.assert_allclose(store["moments"][4, 0], mean, atol=1e-5)
    np.testing.assert_allclose(store["moments"][4, 1], std, atol=1e-5)


def test_another_autoencoder_is_refused(image_folder, tiny_vae_dir, other_vae_dir, tmp_path):
    out = tmp_path / "s.zarr"
    encode_dataset(_cfg(image_folder, out, tiny_vae_dir))
    before = read_store(out)["moments"]
    with pytest.raises(StoreMismatchError, match=r"autoencoder\.weights_hash"):
        encode_dataset(_cfg(image_folder, out, other_vae_dir))
    with pytest.raises(StoreMismatchError, match="resolution: stored 32, requested 16"):
        encode_dataset(_cfg(image_folder, out, tiny_vae_dir, res=16))
    np.testing.assert_array_equal(read_store(out)["moments"], before)  # untouched


def _bad_folder(root: Path) -> Path:
    write_image_folder(root, {"a": 3, "b": 2})
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (9, 9, 9)).save(buf, format="PNG")
    (root / "a" / "img_000.png").write_bytes(buf.getvalue()[:60])  # truncated
    Image.new("RGB", (5, 40)).save(root / "b" / "img_001.jpg")  # too small
    (root / "b" / "zz_junk.png").write_bytes(b"not an image at all")  # unreadable
    return root


def test_bad_images_are_skipped_and_counted(tiny_vae_dir, tmp_path):
    root = _bad_folder(tmp_path / "bad")
    out = tmp_path / "s.zarr"
    summary = encode_dataset(_cfg(root, out, tiny_vae_dir))
    assert (summary.total, summary.encoded, summary.skipped) == (6, 3, 3)
    assert summary.skip_reasons == {"truncated or corrupt": 1, "too small": 1, "unreadable": 1}
    store = read_store(out)
    by_key = {r["key"]: r for r in store["index"]}
    assert by_key["a/img_000.png"]["status"] == "skipped"
    assert by_key["b/img_001.jpg"]["reason"].startswith("too small: 5x40")
    assert by_key["b/zz_junk.png"]["reason"].startswith("unreadable")
    assert by_key["b/img_000.png"]["status"] == "ok" and by_key["b/img_000.png"]["reason"] is None
    for r in store["index"]:
        if r["status"] == "skipped":
            assert not store["moments"][r["position"]].any()  # zero rows, label kept
            assert store["labels"][r["position"]] == r["label"]
    assert store["manifest"]["counts"] == {"total": 6, "ok": 3, "skipped": 3}


def test_strict_stops_naming_the_file(tiny_vae_dir, tmp_path, capsys):
    from lplkit.cli.app import main

    root = _bad_folder(tmp_path / "bad")
    args = ["encode", "--dataset", str(root), "--res", "32", "--vae", str(tiny_vae_dir)]
    args += ["--out", str(tmp_path / "s.zarr"), "--workers", "0", "--strict"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 3  # SourceError family
    err = "".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert f"{root / 'a' / 'img_000.png'}:truncatedorcorrupt" in err
    assert not (tmp_path / "s.zarr" / "index.parquet").exists()  # not finalized


def test_parquet_source_end_to_end(tiny_vae_dir, tmp_path):
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (40 + i, 36, 3), dtype=np.uint8) for i in range(5)]
    blobs = []
    for a in arrays:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        blobs.append({"bytes": buf.getvalue(), "path": None})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"image": pa.array(blobs, type=image_type), "label": [0, 1, 0, 1, 2]})
    pq.write_table(table, tmp_path / "train.parquet")
    out = tmp_path / "s.zarr"
    encode_dataset(_cfg(tmp_path / "train.parquet", out, tiny_vae_dir, dtype="float32"))
    store = read_store(out)
    assert store["labels"].tolist() == [0, 1, 0, 1, 2]
    assert [r["key"] for r in store["index"]] == [f"data/{i:09d}" for i in range(5)]
    for i, a in enumerate(arrays):
        mean, std = direct_moments(tiny_vae_dir, reference_crop(Image.fromarray(a), 32))
        np.testing.assert_allclose(store["moments"][i, 0], mean, atol=1e-5)
        np.testing.assert_allclose(store["moments"][i, 1], std, atol=1e-5)


def test_cli_json_then_rerun_is_a_noop(image_folder, tiny_vae_dir, tmp_path, capsys):
    from lplkit.cli.app import main

    args = ["encode", "--dataset", str(image_folder), "--res", "32", "--vae", str(tiny_vae_dir)]
    args += ["--out", str(tmp_path / "s.zarr"), "--workers", "0", "--shard-size", "5", "--json"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["total"], first["encoded"], first["shards_written"]) == (12, 12, 3)
    with pytest.raises(SystemExit):
        main(args)
    second = json.loads(capsys.readouterr().out)
    assert (second["encoded"], second["shards_written"], second["shards_already_done"]) == (0, 0, 3)
    assert second["completed"] is True


def test_fsspec_url_store_equals_local(image_folder, tiny_vae_dir, tmp_path):
    """A store URL goes through fsspec (memory:// here, s3:// in production) with the same bytes."""
    import uuid

    from lplkit.store import LatentStore

    url = f"memory://lplkit-test-{uuid.uuid4().hex}/s.zarr"
    encode_dataset(_cfg(image_folder, url, tiny_vae_dir))
    encode_dataset(_cfg(image_folder, tmp_path / "s.zarr", tiny_vae_dir))
    local = read_store(tmp_path / "s.zarr")
    remote = LatentStore.open(url)
    mean, std = remote.read(np.arange(12))
    np.testing.assert_array_equal(mean, local["moments"][:, 0].astype(np.float32))
    np.testing.assert_array_equal(std, local["moments"][:, 1].astype(np.float32))
    assert remote.labels.tolist() == local["labels"].tolist()


def test_missing_vae_and_bad_res_are_config_errors(image_folder, tiny_vae_dir, tmp_path):
    from lplkit.errors import ConfigError

    # the bundled emoji autoencoder is the default for --dataset openmoji only
    with pytest.raises(ConfigError, match="--vae is required for --dataset"):
        encode_dataset(EncodeConfig(dataset=str(image_folder), out=str(tmp_path / "a.zarr")))
    with pytest.raises(ConfigError, match="not a multiple of the autoencoder's factor 4"):
        encode_dataset(_cfg(image_folder, tmp_path / "b.zarr", tiny_vae_dir, res=30))
    with pytest.raises(ConfigError, match="--dtype must be one of"):
        encode_dataset(_cfg(image_folder, tmp_path / "c.zarr", tiny_vae_dir, dtype="int8"))


def test_progress_lines_when_stderr_is_not_a_terminal(image_folder, tiny_vae_dir, tmp_path, capsys):
    import re

    from helpers.cli import run_cli

    args = ["encode", "--dataset", str(image_folder), "--res", "32", "--vae", str(tiny_vae_dir),
            "--out", str(tmp_path / "s.zarr"), "--batch-size", "4", "--workers", "0",
            "--log-every", "0"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    pattern = r"encode: (\d+)/12 samples \((\d+\.\d)%\), (\d+\.\d) img/s, ETA (\S+)"
    lines = [m for m in (re.fullmatch(pattern, ln) for ln in err.splitlines()) if m]
    assert [int(m.group(1)) for m in lines] == [4, 8, 12]  # every batch with --log-every 0
    assert lines[-1].group(2) == "100.0" and lines[-1].group(4) == "0s"
    assert "\x1b[" not in err  # no terminal control sequences in a log
