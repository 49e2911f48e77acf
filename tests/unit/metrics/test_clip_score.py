"""`lplkit eval --clip-model`: the CLIP score of samples against their prompts.json equals
100 * max(cos, 0) averaged over pairs, computed by calling transformers' CLIPModel and
CLIPProcessor directly (a tiny random CLIP saved in a hub-cache layout, read offline)."""

from __future__ import annotations

import json
from pathlib import Path

import helpers.text_models as tm
import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from helpers.hub_cache import write_hub_cache
from PIL import Image

REPO, COMMIT = "lplkit-test/tiny-clip-model", "f" * 40
PROMPTS = ["a red cat", "a blue dog", "the sky", "a cat on the grass", "a big tree", "a red cat"]


def tiny_clip(folder: Path) -> Path:
    """A random CLIPModel (32 px vision tower, the helpers' CLIP vocabulary) and its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = tm.clip_tokenizer()
    cfg = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 16, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    torch.manual_seed(3)
    CLIPModel(cfg).eval().save_pretrained(folder)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_home(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("clip")
    home = tmp / "hf-home"
    write_hub_cache(home, REPO, tm.files_of(tiny_clip(tmp / "clip")), COMMIT)
    return home


@pytest.fixture
def hub(clip_home, monkeypatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(clip_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return clip_home


def write_samples(out: Path, prompts: list[str]) -> np.ndarray:
    """OUT/images/*.png (40x48, so the processor resizes and crops) + OUT/prompts.json, the layout
    of `lplkit sample`; listed in reverse file order to check images are matched by name."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(len(prompts), 40, 48, 3), dtype=np.uint8)
    (out / "images").mkdir(parents=True)
    for i, a in enumerate(arr):
        Image.fromarray(a).save(out / "images" / f"{i:06d}.png")
    order = list(reversed(range(len(prompts))))
    (out / "prompts.json").write_text(json.dumps({
        "prompts": [prompts[i] for i in order], "images": [f"images/{i:06d}.png" for i in order],
    }))  # fmt: skip
    return arr


def direct_cosines(home: Path, images: np.ndarray, prompts: list[str]) -> np.ndarray:
    """The oracle: CLIPProcessor(text, images) and CLIPModel.get_*_features called directly."""
    from transformers import CLIPModel, CLIPProcessor

    snap = home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    model, proc = CLIPModel.from_pretrained(snap).eval(), CLIPProcessor.from_pretrained(snap)
    inputs = proc(text=prompts, images=[Image.fromarray(a) for a in images], return_tensors="pt",
                  padding=True)  # fmt: skip
    with torch.no_grad():
        img = model.get_image_features(pixel_values=inputs["pixel_values"])
        txt = model.get_text_features(input_ids=inputs["input_ids"],
                                      attention_mask=inputs["attention_mask"])  # fmt: skip
    img = img if isinstance(img, torch.Tensor) else img.pooler_output  # transformers 5: an output
    txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
    return torch.nn.functional.cosine_similarity(img.double(), txt.double(), dim=-1).numpy()


def test_clip_score_equals_a_direct_transformers_computation(hub, tmp_path, capsys):
    images = write_samples(tmp_path / "s", PROMPTS)
    cos = direct_cosines(hub, images, PROMPTS)
    # the random CLIP gives both signs, so clamping each pair differs from clamping the mean
    assert (cos < 0).any() and (cos > 0).any(), cos
    want = float(np.mean(100 * np.maximum(cos, 0)))
    code, out, _ = run_cli(["eval", "--samples", str(tmp_path / "s" / "images"), "--ref",
                            str(tmp_path / "s" / "images"), "--metrics", "clip", "--clip-model",
                            REPO, "--batch-size", "4", "--json"], capsys)  # fmt: skip
    assert code == 0
    clip = json.loads(out)["clip"]
    assert clip["score"] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert clip["n"] == len(PROMPTS) and clip["clamped"] == int((cos <= 0).sum())


def test_clip_score_of_an_npz_from_a_local_directory(hub, tmp_path):
    from lplkit.metrics.evaluate import EvalOptions, evaluate

    images = write_samples(tmp_path / "s", PROMPTS[:4])
    np.savez(tmp_path / "s" / "samples.npz", arr_0=images)
    folder = hub / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    res = evaluate(tmp_path / "s" / "samples.npz", tmp_path / "s" / "samples.npz",
                   EvalOptions(metrics=("spectrum",), clip_model=str(folder), batch_size=3))  # fmt: skip
    # an .npz's rows follow prompts.json's order (here the reverse of the file names)
    prompts = list(reversed(PROMPTS[:4]))
    cos = direct_cosines(hub, images, prompts)
    assert res["clip"]["score"] == pytest.approx(float(np.mean(100 * np.maximum(cos, 0))), rel=1e-5)
    assert "spectrum" in res


def test_missing_clip_weights_or_prompts_are_one_line(hub, tmp_path, capsys):
    write_samples(tmp_path / "s", PROMPTS[:2])
    args = ["eval", "--samples", str(tmp_path / "s" / "images"), "--ref",
            str(tmp_path / "s" / "images"), "--metrics", "clip"]  # fmt: skip
    code, _, err = run_cli([*args, "--clip-model", "lplkit-test/not-cached"], capsys)
    assert code != 0 and "lplkit-test/not-cached" in err and "hf download" in err
    assert len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--metrics clip needs --clip-model" in err
    (tmp_path / "s" / "prompts.json").unlink()
    code, _, err = run_cli([*args, "--clip-model", REPO], capsys)
    assert code != 0 and "prompts.json" in err and len(err.strip().splitlines()) == 1, err
