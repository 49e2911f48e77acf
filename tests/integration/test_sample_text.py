"""`lplkit sample` of a text-to-image run (issue #23 item 3): prompts encoded with the run's recorded
text encoder (a tiny CLIP in a temporary hub cache, offline) reach the model, guidance is against
the empty caption, a missing encoder and class/text mix-ups are refused in one line, and
`--prompts-from-store` takes held-out captions. Also the training-time preview of a text run."""

from __future__ import annotations

import json
from pathlib import Path

import helpers.text_runs as tr
import numpy as np
import pytest
import torch
from helpers.cli import run_cli

STEPS, SAMPLE_N = 2, 3


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_vae_dir):
    """hub home, train store, held-out store (captions only, one row without), a 2-step PixArt-T/2 run
    with a preview grid at step 2."""
    root = tmp_path_factory.mktemp("t2i")
    home = tr.write_clip_hub(root / "hf-home")
    with pytest.MonkeyPatch.context() as mp:
        tr.use_hub(home, mp)
        store = tr.write_captioned_store(root / "train.zarr", tiny_vae_dir, tr.TRAIN_CAPTIONS)
        held = tr.write_captioned_store(root / "test.zarr", tiny_vae_dir,
                                        [*tr.HELD_OUT_CAPTIONS, ""], seed=1, encode=False)  # fmt: skip
        run = tr.train_text_run(store, root / "run", "--sample-every", "2", "--set",
                                f"log.sample_n={SAMPLE_N}", "--set", f"log.sample_steps={STEPS}",
                                model="PixArt-T/2")  # fmt: skip
    return {"home": home, "store": store, "held": held, "run": run, "vae": tiny_vae_dir}


@pytest.fixture
def hub(world, monkeypatch):
    tr.use_hub(world["home"], monkeypatch)
    return world


def direct_text(home: Path, prompts: list[str]) -> dict[str, torch.Tensor]:
    """The oracle: transformers' CLIPTextModel + CLIPTokenizer loaded from the cache snapshot,
    called as SD3 encodes a CLIP prompt (the store's preset sd3-clip: padded to L, penultimate
    hidden state, no attention mask to the model, pooler_output as pooled)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    snap = (
        home / "hub" / f"models--{tr.CLIP_REPO.replace('/', '--')}" / "snapshots" / tr.CLIP_COMMIT
    )
    model, tok = CLIPTextModel.from_pretrained(snap).eval(), CLIPTokenizer.from_pretrained(snap)
    ids = tok(prompts, padding="max_length", max_length=tr.MAX_TOKENS, truncation=True,
              return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        out = model(ids.input_ids, output_hidden_states=True)
    return {"states": out.hidden_states[-2], "mask": ids.attention_mask.bool(),
            "pooled": out.pooler_output}  # fmt: skip


def direct_images(world, text, null, guidance: float, seed: int, n: int) -> np.ndarray:
    """`samplers.sample` on the run's EMA weights with `text`/`null`, decoded by the tiny VAE."""
    from lplkit.autoencoders.loading import load_autoencoder
    from lplkit.config import from_dict
    from lplkit.diffusion.image_files import to_uint8
    from lplkit.diffusion.samplers import sample
    from lplkit.train.base import load_base
    from lplkit.train.builders import make_objective
    from lplkit.train.config import TrainConfig
    from lplkit.train.normalization import LatentNormalizer

    base = load_base(str(world["run"]))
    objective = make_objective(from_dict(TrainConfig, {"objective": base.info["objective"]}))
    shape = tuple(base.info["latent_shape"])
    noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    z = sample(base.model, objective, (n, *shape), text=text, null_text=null, steps=STEPS,
               guidance=guidance, noise=noise, device="cpu")  # fmt: skip
    vae = load_autoencoder(str(world["vae"]))
    with torch.no_grad():
        x = vae.decode(LatentNormalizer.from_record(base.normalization).unnormalize(z)).sample
    return to_uint8(x.clamp(-1, 1))


def _sample(world, out: Path, *args: str, capsys=None) -> tuple[int, str, str]:
    return run_cli(["sample", "--run", str(world["run"]), "--out", str(out), "--steps",
                    str(STEPS), "--device", "cpu", *args], capsys)  # fmt: skip


def test_prompts_reach_the_model_and_guidance_is_against_the_empty_caption(hub, tmp_path):
    prompts = ["a red cat", "a blue dog, on the grass"]  # the comma stays inside the prompt
    out = tmp_path / "s"
    code, _, _ = _sample(hub, out, "--prompt", prompts[0], "--prompt", prompts[1], "--n", "3",
                         "--cfg", "4.5", "--seed", "7")  # fmt: skip
    assert code == 0
    per_image = [prompts[0], prompts[1], prompts[0]]
    record = json.loads((out / "prompts.json").read_text())
    assert record["prompts"] == per_image
    assert record["images"] == [f"images/{i:06d}.png" for i in range(3)]
    got = np.load(out / "samples.npz")["arr_0"]
    want = direct_images(hub, direct_text(hub["home"], per_image), direct_text(hub["home"], [""]),
                         4.5, 7, 3)  # fmt: skip
    assert got.shape == want.shape == (3, 32, 32, 3)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.99, (diff.max(), (diff == 0).mean())
    # the condition matters: other prompts give other images
    other = direct_images(hub, direct_text(hub["home"], ["the sky"] * 3),
                          direct_text(hub["home"], [""]), 4.5, 7, 3)  # fmt: skip
    assert np.abs(other.astype(int) - want.astype(int)).max() > 8
    grid = np.asarray(__import__("PIL.Image").Image.open(out / "grid.png"))
    assert grid.shape[0] > 32 * 4 and grid.shape[1] > 3 * 128  # captions under enlarged tiles


def test_a_prompts_file_is_one_prompt_per_line(hub, tmp_path):
    file = tmp_path / "p.txt"
    file.write_text("a small cat\n\n  the sky  \n")
    code, _, _ = _sample(hub, tmp_path / "s", "--prompts", str(file), "--n", "3", "--cfg", "1")
    assert code == 0
    record = json.loads((tmp_path / "s" / "prompts.json").read_text())
    assert record["prompts"] == ["a small cat", "the sky", "a small cat"]


def test_a_missing_text_encoder_is_refused_in_one_line(world, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty-home"
    (empty / "hub").mkdir(parents=True)
    tr.use_hub(empty, monkeypatch)
    out = tmp_path / "s"
    code, _, err = _sample(world, out, "--prompt", "a cat", capsys=capsys)
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert tr.CLIP_REPO in lines[0] and tr.CLIP_COMMIT in lines[0] and "hf download" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--labels", "0"], "--labels applies to class-conditional runs"),
        ([], "is a text-to-image run: pass --prompt"),
        (["--prompt", "a", "--prompts", "f.txt"], "pass one of --prompt, --prompts"),
    ],
)
def test_a_text_run_refuses_labels_and_no_prompt(hub, tmp_path, capsys, args, needle):
    code, _, err = _sample(hub, tmp_path / "s", *args, capsys=capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s").exists()


def test_a_class_run_refuses_a_prompt(tmp_path, capsys):
    out = tmp_path / "s"
    code = run_cli(["sample", "--run", "openmoji-base", "--out", str(out), "--prompt", "a cat",
                    "--device", "cpu"])[0]  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--prompt applies to text-to-image runs" in err, err
    assert not out.exists()


def test_prompts_from_store_take_held_out_captions(hub, tmp_path):
    def prompts(*args: str) -> list[str]:
        out = tmp_path / "-".join(args)
        assert (
            _sample(hub, out, "--prompts-from-store", str(hub["held"]), "--cfg", "1", *args)[0] == 0
        )
        return json.loads((out / "prompts.json").read_text())["prompts"]

    held = tr.HELD_OUT_CAPTIONS  # the store's 7th row has no caption: never picked
    a, b = prompts("--n", "4", "--seed", "0"), prompts("--n", "4", "--seed", "5")
    for got in (a, b):
        assert len(set(got)) == 4 and set(got) <= set(held)
        assert got == sorted(got, key=held.index)  # in store order
    assert a != b  # the pick follows the seed
    assert prompts("--n", "8") == [*held, *held[:2]]  # fewer rows than n: all, cycled


def test_prompts_from_the_training_store_are_refused(hub, tmp_path, capsys):
    code, _, err = _sample(hub, tmp_path / "s", "--prompts-from-store", str(hub["store"]),
                           capsys=capsys)  # fmt: skip
    assert code == 2 and "is the store this run was trained on" in err, err


def test_the_training_preview_of_a_text_run_uses_the_first_rows_text(hub):
    """samples/step_00000002.png = the captioned grid of the EMA model sampled at guidance 1 on
    the cached text of the store's first rows (read from the store's zarr arrays directly)."""
    import zarr
    from PIL import Image

    from lplkit.diffusion.image_files import make_captioned_grid

    group = zarr.open_group(str(hub["store"]), mode="r")
    text = {a: torch.from_numpy(np.asarray(group[f"text/tiny-clip/{a}"][:SAMPLE_N]))
            for a in ("states", "mask", "pooled")}  # fmt: skip
    text["mask"] = text["mask"].bool()
    # the run's --seed 1 draws the preview noise; the run's --sample-steps 2
    images = direct_images(hub, text, None, 1.0, 1, SAMPLE_N)
    want = make_captioned_grid(images, tr.TRAIN_CAPTIONS[:SAMPLE_N])
    got = np.asarray(Image.open(hub["run"] / "samples" / "step_00000002.png").convert("RGB"))
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.99


def test_a_text_base_directory_samples_like_its_run(hub, tmp_path):
    """A base (run.json + model.safetensors, as bundled bases ship) samples the run's images."""
    from lplkit.train.base import export_base

    base = export_base(hub["run"], tmp_path / "base", record={}, half=False)
    args = ("--prompt", "a red cat", "--prompt", "the sky", "--n", "2", "--cfg", "2")
    assert _sample(hub, tmp_path / "a", *args)[0] == 0
    assert run_cli(["sample", "--run", str(base), "--out", str(tmp_path / "b"), "--steps",
                    str(STEPS), "--device", "cpu", *args])[0] == 0  # fmt: skip
    a, b = (np.load(tmp_path / d / "samples.npz")["arr_0"] for d in "ab")
    assert np.array_equal(a, b)
