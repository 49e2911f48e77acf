"""`lplkit train` with text-to-image models end to end (issue #23 "Done when"): a captioned image
folder encoded by `lplkit encode` with the tiny VAE and a tiny CLIP cached under the name `clip`,
then `lplkit train --model MMDiT-*/2 --text-encoder clip --lpl --objective flow` trains, resumes
bitwise, and 2 forked gloo ranks equal 1 process; the text/class mismatches are refused in one
line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.cli import run_cli
from helpers.ranks import run_forked_ranks
from helpers.stores import write_exact_store
from helpers.text_stores import caption
from PIL import Image
from safetensors.torch import load_file

from lplkit.train.metrics_log import TIMING_FIELDS, read_metrics

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(scope="module")
def t2i_store(tmp_path_factory, tiny_vae_dir, text_encoder_dirs) -> Path:
    """16 captioned images (metadata.jsonl, no class folders), `lplkit encode --text-encoder DIR`
    with DIR named `clip`: the store caches it under the name `clip`."""
    import numpy as np

    tmp = tmp_path_factory.mktemp("t2i")
    images = tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    with open(images / "metadata.jsonl", "w") as f:
        for p in range(16):
            arr = rng.integers(0, 256, size=(36, 32, 3), dtype=np.uint8)
            Image.fromarray(arr).save(images / f"{p:02d}.png")
            f.write(json.dumps({"file_name": f"{p:02d}.png", "text": caption(p)}) + "\n")
    store = tmp / "s.zarr"
    clip = text_encoder_dirs["clip"]
    assert clip.name == "clip"
    code, _, _ = run_cli(["encode", "--dataset", str(images), "--res", "32", "--vae", str(tiny_vae_dir),
                          "--out", str(store), "--shard-size", "8", "--workers", "0", "--device",
                          "cpu", "--text-encoder", str(clip), "--text-max-tokens", "8"])  # fmt: skip
    assert code == 0
    return store


def _args(store: Path, out: Path, model: str, *extra: str) -> list[str]:
    return ["train", "--store", str(store), "--out", str(out), "--model", model, "--batch-size",
            "8", "--lr", "1e-3", "--seed", "1", "--device", "cpu", "--log-every", "1", *extra]  # fmt: skip


def _done_when(store: Path, out: Path, model: str, steps: int) -> list[str]:
    """The issue's command (+ a small LPL depth and a gate some rows pass and some do not)."""
    return _args(store, out, model, "--text-encoder", "clip", "--lpl", "--objective", "flow",
                 "--lpl-depth", "1", "--lpl-snr-min", "0.5", "--steps", str(steps),
                 "--ckpt-every", "2", "--sample-every", str(steps), "--set", "log.sample_n=3",
                 "--set", "log.sample_steps=2")  # fmt: skip


def _losses(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS}
            for r in read_metrics(run / "metrics.jsonl")]  # fmt: skip


def _ckpt(run: Path, step: int, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step:08d}" / f"{name}.safetensors")


def _trains_and_resumes(store: Path, tmp_path: Path, model: str, steps: int) -> None:
    """`steps` uninterrupted = `steps - 1`, then the same command at `steps` (a resume): weights,
    EMA and metrics bitwise. The LPL is on for the gated rows and adds to the diffusion loss."""
    import jsonschema

    assert run_cli(_done_when(store, tmp_path / "ref", model, steps))[0] == 0
    assert run_cli(_done_when(store, tmp_path / "run", model, steps - 1))[0] == 0
    assert run_cli(_done_when(store, tmp_path / "run", model, steps))[0] == 0
    for name in ("model", "ema"):
        ref, got = _ckpt(tmp_path / "ref", steps, name), _ckpt(tmp_path / "run", steps, name)
        assert ref.keys() == got.keys()
        assert all(torch.equal(got[k], ref[k]) for k in ref), name
    recs = _losses(tmp_path / "ref")
    assert _losses(tmp_path / "run") == recs and [r["step"] for r in recs] == list(
        range(1, steps + 1)
    )
    assert all(r["loss"] == pytest.approx(r["loss_diffusion"] + r["loss_lpl"]) for r in recs)
    assert any(r["loss_lpl"] > 0 for r in recs) and any(r["gate_frac"] < 1 for r in recs)
    # the preview grid conditions on cached captions (a text model has no labels to sample from)
    assert (tmp_path / "ref" / "samples" / f"step_{steps:08d}.png").is_file()
    info = json.loads((tmp_path / "ref" / "run.json").read_text())
    jsonschema.validate(info, json.loads((SCHEMAS / "run.schema.json").read_text()))
    assert [e["name"] for e in info["text_encoders"]] == ["clip"]
    assert info["model"]["text"] == {"tokens": 8, "states_dim": 16, "pooled_dim": 16}


def test_done_when_command_tiny_mmdit_trains_and_resumes(t2i_store, tmp_path):
    _trains_and_resumes(t2i_store, tmp_path, "MMDiT-T/2", 3)


@pytest.mark.slow
def test_done_when_command_mmdit_s_trains_and_resumes(t2i_store, tmp_path):
    _trains_and_resumes(t2i_store, tmp_path, "MMDiT-S/2", 3)


def test_two_gloo_ranks_equal_one_process_with_caption_dropout(t2i_store, tmp_path):
    """Global batch 8 = 2 ranks x 4 with caption dropout 0.3: each rank drops its slice of the
    global draw. Tolerance as in test_train_paths.py's class-model DDP test."""
    one = _args(
        t2i_store, tmp_path / "one", "MMDiT-T/2", "--steps", "3", "--caption-dropout", "0.3"
    )
    assert run_cli(one)[0] == 0
    two = [a.replace(str(tmp_path / "one"), str(tmp_path / "two")) for a in one]
    assert run_forked_ranks(lambda rank: run_cli(two)[0]) == [0, 0]
    for name in ("model", "ema"):
        w1, w2 = _ckpt(tmp_path / "one", 3, name), _ckpt(tmp_path / "two", 3, name)
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=5e-5, msg=f"{name} {k}")
    for a, b in zip(_losses(tmp_path / "one"), _losses(tmp_path / "two"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)


def test_init_from_a_text_base_needs_the_same_text_encoder_outputs(text_store, tmp_path, capsys):
    """A base trained on the tiny CLIP forks on it, and is refused on another CLIP of the same
    dimensions (other weights) in one line: the dims alone would let it train on foreign text."""
    base = tmp_path / "base"
    assert run_cli(_args(text_store("clip"), base, "PixArt-T/2", "--steps", "1"))[0] == 0
    post = _args(
        text_store("clip"), tmp_path / "post", "PixArt-T/2", "--steps", "1", "--init", str(base)
    )
    assert run_cli(post)[0] == 0
    bad = tmp_path / "bad"
    line = _refused(_args(text_store("clip-b"), bad, "PixArt-T/2", "--steps", "1", "--init",
                          str(base)), capsys, bad)  # fmt: skip
    assert "text encoder(s) clip whose cached outputs differ" in line, line


def _refused(args: list[str], capsys, out: Path) -> str:
    capsys.readouterr()  # what earlier commands printed
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert not (out / "config.json").exists() and not (out / "checkpoints").exists()
    return lines[0]


def test_text_and_class_mismatches_are_refused_in_one_line(
    t2i_store, text_store, tiny_vae_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    plain = write_exact_store(tmp_path / "plain.zarr", tiny_vae_dir)
    several = text_store("clip", "t5")
    cases = [
        (plain, "PixArt-T/2", [], "caches no text encoder"),
        (t2i_store, "DiT-T/2", ["--text-encoder", "clip"], "is class-conditional"),
        (t2i_store, "DiT-T/2", [], "has no class labels but caches text encoder(s) clip"),
        (several, "PixArt-T/2", [], "caches several text encoders (clip, t5)"),
        (several, "MMDiT-T/2", ["--text-encoder", "t5"], "pooled text vector"),
        (t2i_store, "PixArt-T/2", ["--text-encoder", "nope"], "--text-encoder nope: "),
    ]
    for store, model, extra, message in cases:
        line = _refused(_args(store, out, model, "--steps", "1", *extra), capsys, out)
        assert message in line, line
