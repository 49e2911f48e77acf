"""text_cache (issue #22): what caching text-encoder outputs costs, measured within one run.

1. encode: `lplkit encode` of the same images without and with `--text-encoder` (a CLIP text
   encoder with random weights, CLIP-L's config by default), interleaved repeats into fresh stores;
   the text stage runs after the image shards (batched separately), so the ratio is
   images-only wall time / images+text wall time of the shard loops.
2. loader: the shuffled `LatentStore.batches` over the same rows without and with `text=` (CLIP-L
   77x768 fp16 rows written directly), samples/s and stored bytes read per second of each.

    OMP_NUM_THREADS=1 python benchmarks/text_cache.py [--n 64 --res 64 --text clip-l] --json

The tokenizer is the tiny offline one of tests/helpers/text_models.py (real CLIP tokenization, a small
vocabulary): the encoder's cost depends on L and the config, not on the vocabulary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

TEXT_CONFIGS = {  # CLIPTextConfig kwargs
    "clip-l": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
               "num_attention_heads": 12, "projection_dim": 768},
    "tiny": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "projection_dim": 8},
}  # fmt: skip


def _text_encoder(kind: str, folder: Path) -> Path:
    import helpers.text_models as tm
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    tok = tm.clip_tokenizer()
    cfg = CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=77,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **TEXT_CONFIGS[kind])  # fmt: skip
    torch.manual_seed(0)
    return tm.save(CLIPTextModelWithProjection(cfg).eval(), tok, folder)


def _images(root: Path, n: int, res: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    words = ["a", "photo", "of", "cat", "dog", "red", "blue", "on", "the", "grass", "tree", "sky"]
    root.mkdir(parents=True)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(n):
            arr = rng.integers(0, 256, (res + 8, res + 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"{i:05d}.jpg", quality=90)
            caption = " ".join(rng.choice(words, int(rng.integers(3, 30))))
            f.write(json.dumps({"file_name": f"{i:05d}.jpg", "text": caption}) + "\n")
    return root


def bench_encode(args, tmp: Path) -> dict:
    import helpers.text_models as tm  # noqa: F401  (checked importable early)
    from diffusers import AutoencoderKL

    from lplkit.encode import EncodeConfig, encode_dataset

    images = _images(tmp / "img", args.n, args.res)
    te = _text_encoder(args.text, tmp / "te")
    vae_dir = tmp / "vae"
    AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                  norm_num_groups=8).save_pretrained(vae_dir)  # fmt: skip
    runs: dict[str, list[dict]] = {"images": [], "images+text": []}
    for r in range(args.repeats):
        for way in runs:
            cfg = EncodeConfig(dataset=str(images), out=str(tmp / f"{way}-{r}.zarr"),
                               vae=str(vae_dir), res=args.res, batch_size=16, workers=1,
                               shard_size=64, device="cpu",
                               text_encoder=[str(te)] if way != "images" else [],
                               text_batch_size=16)  # fmt: skip
            s = encode_dataset(cfg)
            total = s.encode_s + s.text_s
            runs[way].append({"encode_s": round(s.encode_s, 3), "text_s": round(s.text_s, 3),
                              "rows_per_s": round(args.n / total, 2)})  # fmt: skip
    best = {w: max(x["rows_per_s"] for x in v) for w, v in runs.items()}
    return {"runs": runs, "best_rows_per_s": best,
            "ratio": round(best["images+text"] / best["images"], 3)}  # fmt: skip


def bench_loader(args, tmp: Path) -> dict:
    from lplkit.store import LatentStore
    from lplkit.store.sidecar import url_to_fs
    from lplkit.store.synthetic import write_synthetic_store
    from lplkit.store.text import TextWriter, bytes_per_row, ok_rows

    url = str(tmp / "loader.zarr")
    n = args.loader_n
    write_synthetic_store(url, count=n, latent_shape=(4, 32, 32), shard_size=1024, chunk_size=64)
    L, D = 77, 768
    entry = {"id": "random", "subfolder": None, "revision": None, "class": "CLIPTextModel",
             "config_hash": "-", "family": "clip", "preset": None, "layer": "last",
             "pass_mask": False, "max_tokens": L, "hidden_size": D, "pooled_size": D,
             "dtype": "float16"}  # fmt: skip
    rng = np.random.default_rng(0)
    fs, root = url_to_fs(url)
    ok, _ = ok_rows(fs, root, n)
    with TextWriter.create_or_resume(url, "clip", entry) as w:
        w.write_empty({"states": np.zeros((1, L, D), np.float32), "mask": np.ones((1, L), np.uint8),
                       "pooled": np.zeros((1, D), np.float32)})  # fmt: skip
        for s in w.pending_shards():
            lo, hi = w.shard_range(s)
            k = hi - lo
            w.write_shard(s, {"states": rng.standard_normal((k, L, D), dtype=np.float32),
                              "mask": np.ones((k, L), np.uint8),
                              "pooled": rng.standard_normal((k, D), dtype=np.float32)},
                          ok[lo:hi], 0, 0)  # fmt: skip
        w.finalize()
    store = LatentStore.open(url, memory_budget=args.budget)
    latent_bytes = 2 * 4 * 32 * 32 * 2
    text_bytes = bytes_per_row(entry)
    list(store.batches(args.batch, seed=0))  # warm: page cache, the RAM copy of the latents
    list(store.batches(args.batch, seed=0, text=True))
    res: dict[str, list[float]] = {"without": [], "with": []}
    for r in range(args.repeats):
        for way in res:
            t = time.perf_counter()
            rows = sum(len(b[0]) for b in store.batches(args.batch, seed=r, text=way == "with"))
            res[way].append(rows / (time.perf_counter() - t))
    best = {w: max(v) for w, v in res.items()}
    per_row = {"without": latent_bytes, "with": latent_bytes + text_bytes}
    bps = {w: best[w] * per_row[w] / 2**20 for w in best}
    return {"rows": n, "batch": args.batch, "bytes_per_row": per_row,
            "samples_per_s": {w: [round(x, 1) for x in v] for w, v in res.items()},
            "best_samples_per_s": {w: round(v, 1) for w, v in best.items()},
            "best_mib_per_s": {w: round(v, 1) for w, v in bps.items()},
            "ratio_samples": round(best["with"] / best["without"], 3),
            "ratio_bytes": round(bps["with"] / bps["without"], 3)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64, help="images (encode part)")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--text", choices=sorted(TEXT_CONFIGS), default="clip-l")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--loader-n", type=int, default=2048, help="rows (loader part)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--budget", type=int, default=2 << 30, help="loader memory_budget (bytes)")
    p.add_argument("--skip-encode", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        out = {"args": vars(args)}
        if not args.skip_encode:
            out["encode"] = bench_encode(args, Path(d))
        out["loader"] = bench_loader(args, Path(d))
    print(json.dumps(out, indent=1) if args.json else out)


if __name__ == "__main__":
    main()
