"""Captioned latent stores with tiny text encoders cached in them (for the text-to-image trainer
tests): latents written with `StoreWriter` (float32 moments, std > 0), captions built from the
tiny tokenizers' words, each encoder cached by `lplkit.text.cache.encode_text` under its name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import helpers.text_models as tm

COLOURS = ["red", "blue", "green", "small", "big"]
THINGS = ["cat", "dog", "tree", "sky", "grass"]


def caption(p: int) -> str:
    """Row p's caption: distinct for p < 25, so every row has its own text states."""
    return f"a {COLOURS[p % 5]} {THINGS[(p // 5) % 5]}"


def encoder_dirs(root: Path) -> dict[str, Path]:
    """Tiny encoders saved with `save_pretrained`: "clip" (CLIPTextModel), "clip-b" (the same
    architecture, other weights), "clip2" (CLIPTextModelWithProjection), "t5" (T5EncoderModel)."""
    out = {}
    for name, make in (
        ("clip", lambda: tm.clip_model(0)),
        ("clip-b", lambda: tm.clip_model(2)),
        ("clip2", lambda: tm.clip_model(1, projection=True)),
        ("t5", lambda: tm.t5_model(0)),
    ):
        folder = root / name
        if not (folder / "config.json").is_file():
            model, tok = make()
            tm.save(model, tok, folder)
        out[name] = folder
    return out


def write_text_store(
    path: Path,
    vae_dir: Path,
    encoders: dict[str, Path],
    *,
    n: int = 16,
    labels: bool = True,
    max_tokens: int = 8,
) -> Path:
    """A finalized store of `n` float32 moments (4, 8, 8) recorded as encoded by `vae_dir`, caption
    `caption(p)`, label p % 3 (or -1 without `labels`), with each of `encoders` (store name ->
    saved encoder folder) cached in float32 at `max_tokens` tokens."""
    from lplkit.autoencoders.loading import autoencoder_info, load_autoencoder
    from lplkit.store import StoreWriter, new_manifest
    from lplkit.store.synthetic import synthetic_moments
    from lplkit.text.cache import encode_text
    from lplkit.text.config import TextConfig

    moments = synthetic_moments(n, (4, 8, 8), seed=7)
    info = autoencoder_info(load_autoencoder(str(vae_dir)), str(vae_dir))
    manifest = new_manifest(autoencoder=info, resolution=32, latent_shape=(4, 8, 8),
                            source={"id": "captions", "split": "train", "revision": None,
                                    "count": n},
                            dtype="float32", shard_size=8, chunk_size=8, codec="none")  # fmt: skip
    ids = (np.arange(n) % 3).astype(np.int32) if labels else np.full(n, -1, np.int32)
    with StoreWriter.create_or_resume(str(path), manifest) as w:
        for s in w.pending_shards():
            lo, hi = w.shard_range(s)
            rows = [{"key": f"k{p}", "status": "ok", "reason": None, "caption": caption(p)}
                    for p in range(lo, hi)]  # fmt: skip
            w.write_shard(s, moments[lo:hi], None, ids[lo:hi], rows)
        w.finalize()
    for name, folder in encoders.items():
        encode_text(TextConfig(store=str(path), text_encoder=str(folder), name=name,
                               text_max_tokens=max_tokens, text_dtype="float32", device="cpu"))  # fmt: skip
    return path
