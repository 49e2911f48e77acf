"""Aspect-ratio buckets end to end (#25): a DiT trains with the LPL on a two-bucket store (2:1 and
1:2 latents), resume and 2 gloo ranks equal one uninterrupted process, and `lplkit sample --size`
draws at both sizes, against a direct computation (fresh DiT + the checkpoint + lplkit's sampler +
the tiny VAE's decoder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from helpers.ranks import run_forked_ranks
from PIL import Image
from safetensors.torch import load_file

from lplkit.store import LatentStore

SIZES = [(32, 64), (64, 32)]  # (W, H) pixels; the tiny VAE downsamples 4x: latents 16x8, 8x16


@pytest.fixture(scope="module")
def bstore(tmp_path_factory) -> Path:
    from lplkit.store.synthetic import write_synthetic_bucketed_store

    path = tmp_path_factory.mktemp("buckets") / "s.zarr"
    write_synthetic_bucketed_store(path, sizes=SIZES, rows=[24, 16], factor=4, num_classes=3,
                                   dtype="float32", shard_size=8)  # fmt: skip
    return path


def _train(store: Path, out: Path, vae: Path, *extra: str) -> list[str]:
    return ["train", "--store", str(store), "--out", str(out), "--model", "DiT-T/2",
            "--batch-size", "4", "--lr", "1e-3", "--seed", "1", "--device", "cpu",
            "--log-every", "1", "--lpl", "--lpl-depth", "1", "--lpl-snr-min", "0.5",
            "--vae", str(vae), *extra]  # fmt: skip


def _ckpt(run: Path, step: int, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step:08d}" / f"{name}.safetensors")


def _metrics(run: Path) -> list[dict]:
    from lplkit.train.metrics_log import TIMING_FIELDS, read_metrics

    recs = read_metrics(run / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in recs]


STEPS = 4


@pytest.fixture(scope="module")
def run(bstore, tiny_vae_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert (
        run_cli(_train(bstore, out, tiny_vae_dir, "--steps", str(STEPS), "--ckpt-every", "2"))[0]
        == 0
    )
    return out


def test_trains_on_both_buckets_and_records_them(run, bstore):
    import jsonschema

    info = json.loads((run / "run.json").read_text())
    schema = Path(__file__).resolve().parents[2] / "schemas" / "run.schema.json"
    jsonschema.validate(info, json.loads(schema.read_text()))
    assert [tuple(b["size"]) for b in info["buckets"]] == SIZES
    assert info["latent_shape"] == [4, 16, 8]  # the bucket with the most rows
    assert info["model"]["sample_size"] == 8  # isqrt(16 * 8) = 11, down to a multiple of 8
    # the steps the trainer took: the loader's first epoch (seed 1, batch 4) has both shapes
    shapes = [tuple(b[0].shape[2:]) for b, _ in zip(LatentStore.open(bstore).batches(4, seed=1),
                                                     range(STEPS), strict=False)]  # fmt: skip
    assert set(shapes) == {(16, 8), (8, 16)}
    recs = _metrics(run)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    assert all(np.isfinite(r["loss"]) for r in recs) and any(r["loss_lpl"] > 0 for r in recs)


def test_resume_equals_uninterrupted(run, bstore, tiny_vae_dir, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / "checkpoints" / f"step_{STEPS:08d}")
    (again / "metrics.jsonl").write_text(
        "".join(line for line in (run / "metrics.jsonl").read_text().splitlines(True)[:2])
    )
    assert (
        run_cli(_train(bstore, again, tiny_vae_dir, "--steps", str(STEPS), "--ckpt-every", "2"))[0]
        == 0
    )
    for name in ("model", "ema"):
        a, b = _ckpt(run, STEPS, name), _ckpt(again, STEPS, name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert _metrics(again) == _metrics(run)


def test_two_gloo_ranks_equal_one_process(run, bstore, tiny_vae_dir, tmp_path):
    """Tolerances as in test_train_paths.py (gradients averaged in another order)."""
    two = _train(bstore, tmp_path / "two", tiny_vae_dir, "--steps", str(STEPS), "--ckpt-every", "2")
    assert run_forked_ranks(lambda rank: run_cli(two)[0]) == [0, 0]
    for name in ("model", "ema"):
        w1, w2 = _ckpt(run, STEPS, name), _ckpt(tmp_path / "two", STEPS, name)
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=5e-5, msg=f"{name} {k}")
    for a, b in zip(_metrics(run), _metrics(tmp_path / "two"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)


def _oracle(run: Path, vae_dir: Path, shape: tuple[int, int, int], n: int, seed: int) -> np.ndarray:
    from diffusers import AutoencoderKL

    from lplkit.diffusion.denoisers import build_model
    from lplkit.diffusion.image_files import to_uint8
    from lplkit.diffusion.objectives import build_objective
    from lplkit.diffusion.samplers import sample

    info = json.loads((run / "run.json").read_text())
    model = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=3)
    model.load_state_dict(_ckpt(run, STEPS, "ema"))
    noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    z = sample(model.eval(), build_objective("flow"), (n, *shape), labels=torch.arange(n) % 3,
               steps=2, noise=noise)  # fmt: skip
    nrm = info["normalization"]
    shift = torch.tensor(nrm["shift"]).view(1, -1, 1, 1)
    scale = torch.tensor(nrm["scale"]).view(1, -1, 1, 1)
    with torch.no_grad():
        img = AutoencoderKL.from_pretrained(vae_dir).eval().decode(z / scale + shift).sample
    return to_uint8(img.clamp(-1, 1))


def test_sample_at_two_bucket_sizes(run, tiny_vae_dir, tmp_path, capsys):
    out = tmp_path / "s"
    code, text, _ = run_cli(["sample", "--run", str(run), "--size", "64x32,32x64", "--n", "2",
                             "--steps", "2", "--seed", "7", "--out", str(out), "--vae",
                             str(tiny_vae_dir), "--device", "cpu", "--json"], capsys)  # fmt: skip
    assert code == 0
    assert json.loads(text)["sizes"] == ["64x32", "32x64"]
    npz = np.load(out / "samples.npz")
    assert sorted(npz.files) == ["32x64", "64x32"]
    for name, shape in (("64x32", (4, 8, 16)), ("32x64", (4, 16, 8))):
        got = npz[name]
        assert got.shape == (2, shape[1] * 4, shape[2] * 4, 3)
        want = _oracle(run, tiny_vae_dir, shape, 2, 7)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name
    # one row per size, cells of the largest height and width (64 x 64), 2 px padding
    assert Image.open(out / "grid.png").size == (2 * 66 + 2, 2 * 66 + 2)
    assert len(list((out / "images").glob("*.png"))) == 4


def test_sample_size_not_in_the_store_is_refused(run, tiny_vae_dir, tmp_path, capsys):
    out = tmp_path / "s"
    code, _, err = run_cli(["sample", "--run", str(run), "--size", "48x48", "--out", str(out),
                            "--vae", str(tiny_vae_dir), "--device", "cpu"], capsys)  # fmt: skip
    assert code == 2
    assert "--size 48x48" in err and "32x64, 64x32" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_export_records_the_buckets(run, tiny_vae_dir, tmp_path, capsys):
    out = tmp_path / "pipe"
    code, text, _ = run_cli(["export", "--run", str(run), "--out", str(out), "--vae",
                             str(tiny_vae_dir), "--json"], capsys)  # fmt: skip
    assert code == 0
    record = json.loads((out / "lplkit.json").read_text())
    assert record["buckets"] == json.loads((run / "run.json").read_text())["buckets"]
    assert any("32x64, 64x32" in n for n in json.loads(text)["notes"])


def test_a_bucket_grid_the_model_cannot_patch_is_refused(tmp_path, tiny_vae_dir, capsys):
    from lplkit.store.synthetic import write_synthetic_bucketed_store

    store = tmp_path / "odd.zarr"  # latents 24x12 and 12x24: DiT-S/8's patch 8 does not divide 12
    write_synthetic_bucketed_store(store, sizes=[(48, 96), (96, 48)], rows=[8, 8], factor=4)
    args = ["train", "--store", str(store), "--out", str(tmp_path / "r"), "--model", "DiT-S/8",
            "--steps", "1", "--batch-size", "4", "--device", "cpu"]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert "DiT-S/8 needs latent sides divisible by 8, got 24x12 (h x w)" in err
    assert not (tmp_path / "r" / "run.json").exists()


def test_init_from_a_run_onto_a_bucketed_store(run, bstore, tiny_vae_dir, tmp_path):
    out = tmp_path / "ft"
    args = _train(bstore, out, tiny_vae_dir, "--steps", "1", "--init", str(run))
    assert run_cli(args)[0] == 0
    assert json.loads((out / "run.json").read_text())["init"]["step"] == STEPS


def test_text_model_trains_on_a_bucketed_store_with_captions(tmp_path, tiny_vae_dir):
    """Encode 2:1 and 1:2 captioned images with a T5 text cache, check that each bucketed batch's
    text rows are its own rows' (the bucket's cache read directly), train PixArt-T/2 on it."""
    import helpers.text_models as tm

    root = tmp_path / "img"
    root.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(12):
            w, h = (64, 32) if i % 2 else (32, 64)
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"{i:02d}.png")
            f.write(json.dumps({"file_name": f"{i:02d}.png", "text": f"picture {i}"}) + "\n")
    model, tok = tm.t5_model(0)
    t5 = tm.save(model, tok, tmp_path / "t5")
    store = tmp_path / "s.zarr"
    enc = ["encode", "--dataset", str(root), "--res", "32", "--vae", str(tiny_vae_dir), "--out",
           str(store), "--buckets", "48x24,24x48", "--text-encoder", str(t5),
           "--text-max-tokens", "8"]  # fmt: skip
    assert run_cli(enc)[0] == 0
    s = LatentStore.open(store)
    starts = {b.id: b.start for b in s.buckets}
    for latents, _, positions, text in s.batches(2, seed=3, with_index=True, text="t5"):
        b = int(s.bucket_of(positions)[0])
        assert (s.bucket_of(positions) == b).all() and latents.shape[2:] == s.buckets[
            b
        ].latent_shape[1:]
        want = s.bucket_view(b).read_text(positions - starts[b], "t5")["t5"]
        for a in ("states", "mask"):
            assert torch.equal(text["t5"][a], want[a])
    args = ["train", "--store", str(store), "--out", str(tmp_path / "run"), "--model",
            "PixArt-T/2", "--text-encoder", "t5", "--steps", "2", "--batch-size", "2",
            "--device", "cpu", "--seed", "1"]  # fmt: skip
    assert run_cli(args)[0] == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert {tuple(b["size"]) for b in info["buckets"]} == {(48, 24), (24, 48)}
