"""`lplkit train --init ORG/NAME` from a tiny `DiTPipeline` (learned sigma, 1000-class table, DDIM
scheduler, the tiny VAE) in a hub cache under a temporary HF_HOME, read offline.

The oracles are diffusers itself: the pipeline's transformer called directly, `DiTPipeline.__call__`,
and the saved safetensors files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from helpers.hub_cache import write_hub_cache

from lplkit.diffusion.image_files import to_uint8

REPO_ID = "lplkit-test/tiny-dit"
COMMIT = "c" * 40
OLD = "d" * 40  # an older commit (no ref) whose transformer has other weights
# the store's classes sit at these checkpoint ids (a subset in another order: remapped by name)
CLASSES = {"ant": 5, "bee, wasp": 7, "cat": 2}
N, STEPS, SEED, CFG = 3, 4, 3, 2.0


def _id2label() -> dict[str, str]:
    names = {i: f"thing {i}, item {i}" for i in range(1000)}
    names.update({i: name for name, i in CLASSES.items()})
    return {str(i): v for i, v in names.items()}


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory, tiny_vae_dir) -> Path:
    """A DiTPipeline saved with save_pretrained: DiT of 2 blocks, out_channels 8 (learned sigma),
    random weights everywhere (no zero-initialised output that would hide a wrong load)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(11)
    net = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                out_channels=8, num_layers=2, sample_size=8, patch_size=2,
                                num_embeds_ada_norm=1000)  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                              set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")  # fmt: skip
    vae = AutoencoderKL.from_pretrained(str(tiny_vae_dir))
    out = tmp_path_factory.mktemp("pipe") / "tiny-dit"
    DiTPipeline(transformer=net, vae=vae, scheduler=scheduler).save_pretrained(out)
    index = json.loads((out / "model_index.json").read_text())
    index["id2label"] = _id2label()
    (out / "model_index.json").write_text(json.dumps(index))
    return out


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory, pipe_dir) -> Path:
    home = tmp_path_factory.mktemp("hub") / "hf-home"
    files = {
        str(p.relative_to(pipe_dir)): p.read_bytes() for p in pipe_dir.rglob("*") if p.is_file()
    }
    old = dict(files)
    key = "transformer/diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file, save_file

    weights = {k: v + 1.0 for k, v in load_file(str(pipe_dir / key)).items()}
    save_file(weights, str(home.parent / "old.safetensors"))
    old[key] = (home.parent / "old.safetensors").read_bytes()
    write_hub_cache(home, REPO_ID, old, OLD, ref=None)
    write_hub_cache(home, REPO_ID, files, COMMIT)
    return home


@pytest.fixture
def offline_hub(hub_home, monkeypatch) -> Path:
    """This process's huggingface_hub reads the temporary cache, offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_home


def _write_store(path: Path, vae_dir: Path, classes: list[str]) -> Path:
    """16 latents (4, 8, 8) of `vae_dir`'s space, labels p % 3; channel c has mean 2c - 3 and spread
    c + 1, so the store's statistics are far from the pipeline's scalar normalization."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.store import StoreWriter, new_manifest
    from lplkit.store.synthetic import synthetic_moments

    n = 16
    moments = synthetic_moments(n, (4, 8, 8), seed=2)
    c = np.arange(4, dtype=np.float32)[None, :, None, None]
    moments[:, 0] = moments[:, 0] * (c + 1) + (2 * c - 3)
    ae = autoencoder_info(load_autoencoder(str(vae_dir)), str(vae_dir))
    manifest = new_manifest(autoencoder=ae, resolution=32, latent_shape=(4, 8, 8),
                            source={"id": "init", "split": "train", "revision": None, "count": n},
                            dtype="float32", shard_size=16, chunk_size=8, codec="none",
                            classes=classes)  # fmt: skip
    with StoreWriter.create_or_resume(str(path), manifest) as w:
        rows = [{"key": f"k{p}", "status": "ok", "reason": None} for p in range(n)]
        w.write_shard(0, moments, None, (np.arange(n) % 3).astype(np.int32), rows)
        w.finalize()
    assert run_cli(["stats", str(path), "--latents-only", "--device", "cpu"])[0] == 0
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_vae_dir) -> Path:
    return _write_store(tmp_path_factory.mktemp("init") / "s.zarr", tiny_vae_dir, list(CLASSES))


def _train(store: Path, out: Path, init: str, *extra: str, capsys=None) -> tuple[int, str, str]:
    return run_cli(["train", "--store", str(store), "--out", str(out), "--init", init,
                    "--objective", "eps", "--batch-size", "4", "--device", "cpu", "--json",
                    *extra], capsys)  # fmt: skip


def _components(store: Path, out: Path, init: str):
    from lplkit.train.builders import build_components
    from lplkit.train.config import TrainConfig

    cfg = TrainConfig(store=str(store), out=str(out), init=init, device="cpu")
    cfg.objective.kind = "eps"
    return build_components(cfg, torch.device("cpu"))


def test_hub_init_loads_the_weights_bitwise_and_predicts_as_the_transformer(
    offline_hub, store, pipe_dir, tmp_path
):
    from diffusers import DiTTransformer2DModel
    from safetensors.torch import load_file

    parts = _components(store, tmp_path / "r", REPO_ID)
    saved = load_file(str(pipe_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    got = parts.model.net.state_dict()
    assert set(got) == set(saved)
    assert all(torch.equal(got[k], saved[k]) for k in saved)
    # the pipeline's scalar normalization, not the store's per-channel statistics
    assert parts.normalizer.shift == (0.0,) * 4 and parts.normalizer.scale == (0.5,) * 4
    assert parts.model.spec["name"] == f"diffusers:{REPO_ID}@{COMMIT}:transformer"
    assert parts.init["revision"] == COMMIT and parts.init["learned_sigma"] is True
    assert parts.num_classes == 3 and parts.null_label in (None, 3)

    ref = DiTTransformer2DModel.from_pretrained(str(pipe_dir / "transformer")).eval()
    z, t = (
        torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0)),
        torch.tensor([0, 10, 500, 999]),
    )
    store_labels = torch.tensor([0, 1, 2, 3])  # ant, bee, cat, the store's null id
    with torch.no_grad():
        mine = parts.model.eval()(z, t, store_labels)
        theirs = ref(z, t, class_labels=torch.tensor([5, 7, 2, 1000])).sample
    assert mine.shape == (4, 4, 8, 8) and theirs.shape == (4, 8, 8, 8)
    assert torch.equal(mine, theirs[:, :4])  # the eps half, exactly


def _pipeline_images(
    pipe_dir: Path, labels: list[int], *, scramble_sigma: bool = False
) -> np.ndarray:
    from diffusers import DiTPipeline

    pipe = DiTPipeline.from_pretrained(str(pipe_dir))
    if scramble_sigma:  # new values for the rows of the final layer that output the variance half
        with torch.no_grad():
            for p in (pipe.transformer.proj_out_2.weight, pipe.transformer.proj_out_2.bias):
                rows = p.view(-1, 2, 4, *p.shape[1:])[:, 1]  # (patch, patch, 2C) output order
                rows.copy_(torch.randn_like(rows) * 10)
    out = pipe(class_labels=labels, guidance_scale=CFG, num_inference_steps=STEPS,
               generator=torch.Generator().manual_seed(SEED), output_type="pt").images  # fmt: skip
    return to_uint8(out * 2 - 1)  # DiTPipeline returns (x + 1) / 2 clamped to [0, 1]


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    assert ref.std() > 10  # not a blank image that would match anything


def test_sample_at_step_zero_equals_dit_pipeline_and_run_records_the_commit(
    offline_hub, store, pipe_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    # one step at lr 1e-30 leaves every weight as loaded (a run needs a checkpoint to sample)
    code, _, err = _train(store, run, REPO_ID, "--steps", "1", "--lr", "1e-30", capsys=capsys)
    assert code == 0, err
    info = json.loads((run / "run.json").read_text())
    assert info["init"]["revision"] == COMMIT and info["init"]["kind"] == "diffusers"
    assert info["model"]["name"] == f"diffusers:{REPO_ID}@{COMMIT}:transformer"
    assert info["normalization"] == {
        "shift": [0.0] * 4,
        "scale": [0.5] * 4,
        "source": "autoencoder",
    }
    code, _, err = run_cli(["sample", "--run", str(run), "--no-ema", "--n", str(N), "--steps",
                            str(STEPS), "--seed", str(SEED), "--cfg", str(CFG), "--labels", "0,1,2",
                            "--out", str(tmp_path / "s"),
                            "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    ref = np.load(tmp_path / "s" / "samples.npz")["arr_0"]
    ids = [CLASSES["ant"], CLASSES["bee, wasp"], CLASSES["cat"]]
    _close(_pipeline_images(pipe_dir, ids), ref)
    # the variance half is never read by DiTPipeline's sampling (nor lplkit's): why leaving it
    # untrained in post-training is harmless to both (docs/post-training.md)
    assert np.array_equal(
        _pipeline_images(pipe_dir, ids, scramble_sigma=True), _pipeline_images(pipe_dir, ids)
    )


def test_post_train_with_lpl_export_and_reimport_is_exact(offline_hub, store, tmp_path, capsys):
    from safetensors.torch import load_file

    from lplkit.train.checkpoint import load_latest

    run = tmp_path / "run"
    code, _, err = _train(store, run, REPO_ID, "--lpl", "--lpl-snr-min", "0", "--steps", "2",
                          "--lr", "1e-3", capsys=capsys)  # fmt: skip
    assert code == 0, err
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("loss_lpl", 0) > 0 for m in metrics), metrics  # the LPL term ran
    pipe = tmp_path / "pipe"
    code, _, err = run_cli(["export", "--run", str(run), "--out", str(pipe)], capsys)
    assert code == 0, err
    ema = load_latest(run / "checkpoints").ema
    exported = load_file(str(pipe / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(ema[f"net.{k}"], v) for k, v in exported.items())
    assert json.loads((pipe / "model_index.json").read_text())["id2label"] == _id2label()

    parts = _components(store, tmp_path / "r2", str(pipe))
    again = parts.model.net.state_dict()
    assert set(again) == set(exported) and all(torch.equal(again[k], exported[k]) for k in again)
    info = json.loads((run / "run.json").read_text())
    norm = parts.normalizer
    assert [list(norm.shift), list(norm.scale), norm.source] == [
        info["normalization"]["shift"],
        info["normalization"]["scale"],
        info["normalization"]["source"],
    ]
    assert parts.model.label_map.tolist() == [5, 7, 2, 1000]
    # the trained weights moved away from the checkpoint's (the round trip is not vacuous)
    start = _components(store, tmp_path / "r3", REPO_ID).model.net.state_dict()
    assert any(not torch.equal(start[k], again[k]) for k in start)


def _refusal(capsys, store: Path, tmp_path: Path, *extra: str, init: str = REPO_ID) -> str:
    capsys.readouterr()  # the store fixture's output
    code, out, err = _train(store, tmp_path / "run", init, "--steps", "1", *extra, capsys=capsys)
    assert code != 0, out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    return lines[0]


def test_store_of_another_vae_is_refused_naming_the_vae(
    offline_hub, other_vae_dir, tmp_path, capsys
):
    other = _write_store(tmp_path / "o.zarr", other_vae_dir, list(CLASSES))
    line = _refusal(capsys, other, tmp_path)
    assert f"--vae {REPO_ID} --vae-subfolder vae --vae-revision {COMMIT}" in line, line


def test_flow_objective_on_an_eps_checkpoint_is_refused(offline_hub, store, tmp_path, capsys):
    line = _refusal(capsys, store, tmp_path, "--objective", "flow")
    assert "eps objective" in line and "--objective eps" in line, line


def test_unknown_class_name_is_refused(offline_hub, tiny_vae_dir, tmp_path, capsys):
    odd = _write_store(tmp_path / "u.zarr", tiny_vae_dir, ["ant", "unicorn", "cat"])
    line = _refusal(capsys, odd, tmp_path)
    assert "'unicorn' (unknown)" in line, line


def test_init_revision_picks_the_commit_and_a_model_folder_spec_loads_the_same(
    offline_hub, store, pipe_dir, tmp_path
):
    from lplkit.train.builders import build_components
    from lplkit.train.config import TrainConfig

    cfg = TrainConfig(store=str(store), out=str(tmp_path / "r"), init=REPO_ID, init_revision=OLD)
    cfg.objective.kind = "eps"
    old = build_components(cfg, torch.device("cpu"))
    main = _components(store, tmp_path / "m", f"{REPO_ID}:transformer")
    assert old.init["revision"] == OLD and main.init["revision"] == COMMIT
    assert main.model.spec["name"] == f"diffusers:{REPO_ID}@{COMMIT}:transformer"
    a, b = old.model.net.state_dict(), main.model.net.state_dict()
    assert all(torch.equal(a[k], b[k] + 1.0) for k in a)
    local = _components(store, tmp_path / "l", f"{pipe_dir}:transformer").model.net.state_dict()
    assert all(torch.equal(local[k], b[k]) for k in b)


def test_a_run_started_from_a_pipeline_resumes_bitwise(offline_hub, store, tmp_path, capsys):
    """Checkpoint at step 1, the step-2 checkpoint lost (a kill before it was written): the re-run
    re-resolves the hub checkpoint, resumes from step 1 and ends with the weights of an
    uninterrupted run."""
    import shutil

    from lplkit.train.checkpoint import load_latest

    args = ("--lpl", "--lpl-snr-min", "0", "--steps", "2", "--lr", "1e-3", "--ckpt-every", "1")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for run in (whole, cut):
        code, _, err = _train(store, run, REPO_ID, *args, capsys=capsys)
        assert code == 0, err
    steps = sorted((cut / "checkpoints").glob("step_*"))
    assert len(steps) == 2
    shutil.rmtree(steps[-1])
    assert load_latest(cut / "checkpoints").step == 1
    code, _, err = _train(store, cut, REPO_ID, *args, capsys=capsys)
    assert code == 0, err
    a, b = load_latest(whole / "checkpoints"), load_latest(cut / "checkpoints")
    assert a.step == b.step == 2
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
