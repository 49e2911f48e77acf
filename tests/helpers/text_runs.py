"""A tiny text-to-image run built offline: a captioned store of random latents (recorded as encoded by
the tiny VAE), a tiny CLIP text encoder in a hub cache under a temporary HF_HOME cached in it
(`lplkit encode-text`), and `lplkit train --model UNetText-T` for a few steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import helpers.text_models as tm
from helpers.hub_cache import write_hub_cache

CLIP_REPO = "lplkit-test/tiny-clip"
CLIP_COMMIT = "e" * 40
MAX_TOKENS = 16  # the tiny CLIP's position table
TRAIN_CAPTIONS = ["a red cat", "a blue dog", "a green tree", "a cat on the grass",
                  "a big dog", "the blue sky", "a small red tree", "a dog on the grass"]  # fmt: skip
HELD_OUT_CAPTIONS = ["a small cat", "the green grass", "a big blue tree", "a photo of a dog",
                     "a red sky", "a cat on a tree"]  # fmt: skip


def write_clip_hub(home: Path, seed: int = 0) -> Path:
    """`home`/hub holds CLIP_REPO at CLIP_COMMIT: a tiny CLIPTextModel + tokenizer."""
    m, tok = tm.clip_model(seed)
    folder = tm.save(m, tok, home.parent / f"clip-{seed}")
    write_hub_cache(home, CLIP_REPO, tm.files_of(folder), CLIP_COMMIT)
    return home


def use_hub(home: Path, monkeypatch) -> None:
    """This process's huggingface_hub reads `home`'s cache, offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_captioned_store(
    path: Path, vae_dir: Path, captions: list[str], seed: int = 0, *, encode: bool = True
) -> Path:
    """A finalized store of random (4, 8, 8) latents, one row per caption (labels 0), recorded as
    encoded by `vae_dir`; `encode`: with `encode-text` of CLIP_REPO (the hub must be in use)."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.store import StoreWriter, new_manifest
    from lplkit.store.synthetic import synthetic_moments
    from lplkit.text.cache import TextConfig, encode_text

    n = len(captions)
    moments = synthetic_moments(n, (4, 8, 8), seed=seed)
    ae = autoencoder_info(load_autoencoder(str(vae_dir)), str(vae_dir))
    manifest = new_manifest(autoencoder=ae, resolution=32, latent_shape=(4, 8, 8),
                            source={"id": f"captions-{seed}", "split": "train", "revision": None,
                                    "count": n},
                            dtype="float32", shard_size=n, chunk_size=n, codec="none")  # fmt: skip
    with StoreWriter.create_or_resume(str(path), manifest) as w:
        rows = [{"key": f"k{p}", "status": "ok", "reason": None, "caption": c}
                for p, c in enumerate(captions)]  # fmt: skip
        w.write_shard(0, moments, None, np.zeros(n, np.int32), rows)
        w.finalize()
    if encode:
        encode_text(TextConfig(store=str(path), text_encoder=CLIP_REPO, text_max_tokens=MAX_TOKENS,
                               text_dtype="float32", device="cpu"))  # fmt: skip
    return path


def train_text_run(store: Path, out: Path, *extra: str, model: str = "UNetText-T") -> Path:
    """`lplkit train` of `model` on `store` for 2 steps (flow objective) in this process."""
    from helpers.cli import run_cli

    args = ["train", "--store", str(store), "--out", str(out), "--model", model, "--objective",
            "flow", "--steps", "2", "--batch-size", "4", "--lr", "1e-3", "--seed", "1",
            "--device", "cpu", "--ckpt-every", "2", *extra]  # fmt: skip
    code = run_cli(args)[0]
    assert code == 0, code
    return out
