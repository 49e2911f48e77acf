"""`lplkit export` of text runs: `PixArtSigmaPipeline` / `StableDiffusion3Pipeline.from_pretrained` on
the exported folder gives lplkit's samples for the same prompts, seed, steps and guidance (tiny random
CLIP/T5 encoders in a hub cache under a temporary HF_HOME, read offline; per-channel store statistics
folded into the autoencoder); other text runs are refused in one line before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import helpers.text_models as tm
import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from helpers.hub_cache import write_hub_cache

from lplkit.diffusion.image_files import to_uint8

SD3_REPO, SD3_COMMIT = "lplkit-test/tiny-sd3", "e" * 40
T5_REPO, T5_COMMIT = "lplkit-test/tiny-t5", "f" * 40
# lowercase: PixArtSigmaPipeline lowercases prompts (lplkit does not)
PROMPTS = ["a red cat on the grass", "a small blue dog", "the big green tree"]
STEPS, SEED, CFG = 4, 3, 3.0
L_CLIP, L_T5 = 10, 12  # not the pipelines' defaults (77 / 256 / 300): the export must carry them


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The hub cache this process reads (huggingface_hub reads HF_HOME once, at import)."""
    from huggingface_hub import constants

    tmp = tmp_path_factory.mktemp("texport-hub")
    home = tmp / "hf-home"
    write_hub_cache(home, SD3_REPO, tm.sd3_repo(tmp), SD3_COMMIT)
    write_hub_cache(home, T5_REPO, tm.t5_repo(tmp), T5_COMMIT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
        mp.setattr(constants, "HF_HUB_OFFLINE", True)
        yield home


def _ok(*args: str) -> None:
    code, _, err = run_cli(list(args))
    assert code == 0, (args, err)


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_vae_dir, hub) -> Path:
    """16 captioned rows; channel c has mean 2c - 3 and spread c + 1 (a wrong fold shows in the
    pixels); CLIP-L, CLIP-G and T5 (SD3's set) and a masked T5 (PixArt's) cached."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.store.synthetic import synthetic_moments, write_synthetic_store

    path = tmp_path_factory.mktemp("texport") / "s.zarr"
    n = 16
    moments = synthetic_moments(n, (4, 8, 8), seed=2)
    c = np.arange(4, dtype=np.float32)[None, :, None, None]
    moments[:, 0] = moments[:, 0] * (c + 1) + (2 * c - 3)
    ae = autoencoder_info(load_autoencoder(str(tiny_vae_dir)), str(tiny_vae_dir))
    write_synthetic_store(path, count=n, latent_shape=(4, 8, 8), shard_size=16, chunk_size=8,
                          dtype="float32", autoencoder=ae, moments=moments, captions=True)  # fmt: skip
    _ok("stats", str(path), "--samples", "0", "--latents-only", "--device", "cpu")
    enc = ["encode-text", str(path), "--text-dtype", "float32", "--device", "cpu"]
    for spec, name, extra in [
        (f"{SD3_REPO}:text_encoder", "clip_l", ["--text-max-tokens", str(L_CLIP)]),
        (f"{SD3_REPO}:text_encoder_2", "clip_g", ["--text-max-tokens", str(L_CLIP)]),
        (f"{SD3_REPO}:text_encoder_3", "t5", ["--text-preset", "sd3-t5", "--text-max-tokens", str(L_T5)]),
        (T5_REPO, "t5_pixart", ["--text-max-tokens", str(L_T5)]),  # pixart-sigma-t5: mask passed
    ]:  # fmt: skip
        _ok(*enc, "--text-encoder", spec, "--name", name, *extra)
    return path


def _train(store: Path, out: Path, model: str, objective: str, encoders: list[str]) -> Path:
    te = [a for name in encoders for a in ("--text-encoder", name)]
    _ok("train", "--store", str(store), "--out", str(out), "--model", model, *te, "--objective",
        objective, "--batch-size", "8", "--steps", "2", "--lr", "1e-2", "--seed", "1",
        "--device", "cpu")  # fmt: skip
    return out


def _lplkit_images(run: Path, prompts: list[str], sampler: str | None) -> np.ndarray:
    """lplkit's sampling: the run's encoders loaded and called as `lplkit encode-text` does, the
    condition combined in the recorded order, `samplers.sample` from seeded noise, decoded."""
    from lplkit.diffusion import text_conditioning as tc
    from lplkit.diffusion.samplers import sample
    from lplkit.text.encoders import encode_captions, load_text_encoder
    from lplkit.train.base import load_run_model
    from lplkit.train.builders import load_decoder_vae, make_objective
    from lplkit.train.normalization import LatentNormalizer

    tcfg, info, model, _ = load_run_model(run)
    parts, nulls = [], []
    for e in info["text_encoders"]:
        spec = f"{e['id']}:{e['subfolder']}" if e.get("subfolder") else e["id"]
        te = load_text_encoder(spec, revision=e["revision"], preset=e["preset"], layer=e["layer"],
                               max_tokens=e["max_tokens"])  # fmt: skip
        for texts, into in ((prompts, parts), ([""], nulls)):
            got, _ = encode_captions(te, texts)
            into.append((e["family"], {k: torch.from_numpy(v) for k, v in got.items()}))
    shape = tuple(info["latent_shape"])
    noise = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(SEED))
    z = sample(model.eval(), make_objective(tcfg), (len(prompts), *shape), text=tc.combine(parts),
               null_text=tc.combine(nulls), steps=STEPS, guidance=CFG, sampler=sampler,  # type: ignore[arg-type]
               noise=noise)  # fmt: skip
    ae = load_decoder_vae(tcfg, {"autoencoder": info["store"]["autoencoder"]}, torch.device("cpu"))
    with torch.no_grad():
        imgs = ae.decode(LatentNormalizer.from_record(info["normalization"]).unnormalize(z)).sample
    return to_uint8(imgs.clamp(-1, 1))


def _pipeline_images(pipe_dir: Path, pipeline: str, prompts: list[str], **call) -> np.ndarray:
    import diffusers

    pipe = getattr(diffusers, pipeline).from_pretrained(str(pipe_dir))
    out = pipe(prompts, num_inference_steps=STEPS, guidance_scale=CFG, output_type="pt",
               generator=torch.Generator().manual_seed(SEED), **call).images  # fmt: skip
    return to_uint8(out * 2 - 1)  # the pipelines return (x + 1) / 2 clamped to [0, 1]


CASES = {
    # model, objective, encoders (recorded order), pipeline, the call arguments it needs
    "pixart-eps": ("PixArt-T/2", "eps", ["t5_pixart"], "PixArtSigmaPipeline",
                   {"max_sequence_length": L_T5, "use_resolution_binning": False,
                    "clean_caption": False}),
    "pixart-flow": ("PixArt-T/2", "flow", ["t5_pixart"], "PixArtSigmaPipeline",
                    {"max_sequence_length": L_T5, "use_resolution_binning": False,
                     "clean_caption": False}),
    # T5 listed first: combine puts the CLIPs first whatever the order, as SD3 does
    "sd3-flow": ("MMDiT-T/2", "flow", ["t5", "clip_l", "clip_g"], "StableDiffusion3Pipeline",
                 {"max_sequence_length": L_T5}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_exported_text_pipeline_matches_lplkit_sampling(case, store, tmp_path, capsys):
    model, objective, encoders, pipeline, call = CASES[case]
    run = _train(store, tmp_path / "run", model, objective, encoders)
    sampler = "euler" if objective == "flow" else None
    ref = _lplkit_images(run, PROMPTS, sampler)

    capsys.readouterr()  # training's output
    code, out, err = run_cli(["export", "--run", str(run), "--out", str(tmp_path / "pipe"),
                              "--json"], capsys)  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["pipeline"] == pipeline and summary["call"] == call
    record = json.loads((tmp_path / "pipe" / "lplkit.json").read_text())
    assert [e["name"] for e in record["text_encoders"]] == (
        ["clip_l", "clip_g", "t5"] if pipeline == "StableDiffusion3Pipeline" else encoders
    )
    got = _pipeline_images(tmp_path / "pipe", pipeline, PROMPTS, **call)
    assert got.shape == ref.shape == (len(PROMPTS), 32, 32, 3)
    diff = np.abs(got.astype(int) - ref.astype(int))
    # float tolerance: a 1e-6 difference can cross a uint8 rounding boundary, nothing more
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    assert ref.std() > 10  # not a blank image that would match anything
    # the prompts reach the images: another prompt order gives other images
    assert not np.array_equal(ref[0], _lplkit_images(run, PROMPTS[::-1], sampler)[0])


def test_text_runs_without_a_matching_pipeline_are_refused_before_writing(store, tmp_path, capsys):
    # (every other set: tests/unit/test_export_text.py)
    for model, encoders, says in [
        ("PixArt-T/2", ["clip_l"], "PixArtSigmaPipeline needs one T5 encoder"),
        ("UNetText-T", ["t5_pixart"], "StableDiffusionPipeline feeds its U-Net no cross-attention"),
    ]:
        run = _train(store, tmp_path / model.replace("/", "_"), model, "eps", encoders)
        out = tmp_path / f"pipe-{model.replace('/', '_')}"
        capsys.readouterr()  # training's output
        code, _, err = run_cli(["export", "--run", str(run), "--out", str(out)], capsys)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, (code, err)
        assert not out.exists()
