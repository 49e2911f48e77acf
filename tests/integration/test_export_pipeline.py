"""`lplkit export` -> `DiTPipeline.from_pretrained` reproduces `lplkit sample` (same seed, noise, sampler,
steps, guidance), with per-channel store statistics folded into the exported autoencoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_cli

from lplkit.diffusion.image_files import to_uint8

N, STEPS, SEED, CFG = 3, 4, 3, 2.0


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_vae_dir) -> Path:
    """3 classes; channel c has mean 2c - 3 and spread c + 1, so the stats normalization is far
    from the identity (a wrong fold shows in the pixels)."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.store import StoreWriter, new_manifest
    from lplkit.store.synthetic import synthetic_moments

    path = tmp_path_factory.mktemp("export") / "s.zarr"
    n = 16
    moments = synthetic_moments(n, (4, 8, 8), seed=2)
    c = np.arange(4, dtype=np.float32)[None, :, None, None]
    moments[:, 0] = moments[:, 0] * (c + 1) + (2 * c - 3)
    ae = autoencoder_info(load_autoencoder(str(tiny_vae_dir)), str(tiny_vae_dir))
    manifest = new_manifest(autoencoder=ae, resolution=32, latent_shape=(4, 8, 8),
                            source={"id": "export", "split": "train", "revision": None, "count": n},
                            dtype="float32", shard_size=16, chunk_size=8, codec="none",
                            classes=["ant", "bee, wasp", "cat"])  # fmt: skip
    labels = (np.arange(n) % 3).astype(np.int32)
    with StoreWriter.create_or_resume(str(path), manifest) as w:
        rows = [{"key": f"k{p}", "status": "ok", "reason": None} for p in range(n)]
        w.write_shard(0, moments, None, labels, rows)
        w.finalize()
    assert (
        run_cli(["stats", str(path), "--samples", "0", "--latents-only", "--device", "cpu"])[0] == 0
    )
    return path


def _run(*args: str, capsys=None) -> str:
    code, out, err = run_cli(list(args), capsys)
    assert code == 0, err
    return out


def _pipeline_images(pipe_dir: Path, labels: list[int]) -> np.ndarray:
    from diffusers import DiTPipeline

    pipe = DiTPipeline.from_pretrained(str(pipe_dir))
    # id2label (the store's class names) came back from model_index.json; DiT splits synonyms at ","
    assert pipe.labels == {"ant": 0, "bee": 1, "cat": 2, "wasp": 1}
    assert pipe.get_label_ids(["cat", "wasp"]) == [2, 1]
    out = pipe(class_labels=labels, guidance_scale=CFG, num_inference_steps=STEPS,
               generator=torch.Generator().manual_seed(SEED), output_type="pt").images  # fmt: skip
    return to_uint8(out * 2 - 1)  # DiTPipeline returns (x + 1) / 2 clamped to [0, 1]


@pytest.mark.parametrize("objective", ["eps", "v", "flow"])
def test_exported_pipeline_matches_lplkit_sample(objective, store, tmp_path, capsys):
    run = tmp_path / "run"
    _run("train", "--store", str(store), "--out", str(run), "--model", "DiT-T/2", "--objective",
         objective, "--batch-size", "8", "--steps", "2", "--lr", "1e-2", "--seed", "1",
         "--device", "cpu", "--json", capsys=capsys)  # fmt: skip
    assert json.loads((run / "run.json").read_text())["normalization"]["source"] == "stats"
    sampler = ["--sampler", "euler"] if objective == "flow" else []
    _run("sample", "--run", str(run), "--n", str(N), "--steps", str(STEPS), "--seed", str(SEED),
         "--cfg", str(CFG), "--out", str(tmp_path / "s"), "--device", "cpu", *sampler)  # fmt: skip
    ref = np.load(tmp_path / "s" / "samples.npz")["arr_0"]
    summary = json.loads(_run("export", "--run", str(run), "--out", str(tmp_path / "pipe"),
                              "--steps", str(STEPS), "--json", capsys=capsys))  # fmt: skip
    assert summary["scheduler"] == ("FlowMapEulerDiscreteScheduler" if objective == "flow"
                                    else "DDIMScheduler")  # fmt: skip
    assert "model_index.json" in summary["files"]
    assert not any(
        "scale_model_input" in n for n in summary["notes"]
    )  # a stock DiTPipeline runs it
    assert not any("id2label" in n for n in summary["notes"])  # the store has class names

    got = _pipeline_images(tmp_path / "pipe", [0, 1, 2])  # stock, as exported
    assert got.shape == ref.shape == (N, 32, 32, 3)
    diff = np.abs(got.astype(int) - ref.astype(int))
    # float tolerance: a 1e-6 difference can cross a uint8 rounding boundary, nothing more
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    assert ref.std() > 10  # not a blank image that would match anything
