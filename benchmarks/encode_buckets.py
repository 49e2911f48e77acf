"""encode_buckets: `lplkit encode` throughput of a bucketed store vs a square one, same images, one run.

The images: `--n` JPEGs (q=90) of mixed shapes, aspect w/h log-uniform in [1/3, 3], area about
1.5 res^2 (smooth content + noise). Each repeat encodes them twice into fresh stores, interleaved:

- square: `--res R` (ADM crop to R x R: one store);
- bucketed: `--res R --buckets SPEC` (default sdxl: each image resized and center-cropped to its
  nearest-aspect bucket of about R^2 pixels; one store per bucket, written one after another).

Reported per run: images/s of the shard loop (`encode_s`, `images_per_s`), the whole call
(`elapsed_s`: model load, source listing and, bucketed, the header pre-pass included), the
pre-pass alone (the `ImageSizes` header reads over the folder, timed separately here), and the
buckets the images fell in. ratio = bucketed / square images/s (best run of each, and per pair).
The latents differ in shape but not much in pixels (every bucket is ~R^2 px), so the autoencoder
work is about equal; what a ratio below 1 shows is the per-bucket cost (a DataLoader and its
workers per bucket, a partial last batch and an unoverlapped last shard write per bucket).

    OMP_NUM_THREADS=1 python benchmarks/encode_buckets.py --res 64 --n 512 --workers 1 --json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from random_autoencoders import random_autoencoder

from lplkit.data.prepared import ImageSizes
from lplkit.data.sources import resolve_source
from lplkit.encode import EncodeConfig, encode_dataset


def make_images(root: Path, n: int, res: int, seed: int = 0) -> Path:
    """`n` JPEGs of aspect log-uniform in [1/3, 3] and ~1.5 res^2 pixels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        aspect = float(np.exp(rng.uniform(np.log(1 / 3), np.log(3))))
        area = 1.5 * res * res
        w, h = max(8, round((area * aspect) ** 0.5)), max(8, round((area / aspect) ** 0.5))
        low = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
        noisy = np.asarray(img, np.int16) + rng.integers(-12, 13, (h, w, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            root / f"{i:06d}.jpg", quality=90
        )
    return root


def run(cfg: EncodeConfig) -> dict:
    s = encode_dataset(cfg)
    return {"images_per_s": s.images_per_s, "encode_s": s.encode_s, "elapsed_s": s.elapsed_s,
            "input_wait_s": s.input_wait_s, "write_wait_s": s.write_wait_s,
            "shards": s.shards_total, "encoded": s.encoded}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--buckets", default="sdxl")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="encode_buckets-"))
    try:
        images = make_images(tmp / "img", args.n, args.res)
        vae = tmp / "ae"
        random_autoencoder("tiny").save_pretrained(vae)
        source = ImageSizes(resolve_source(str(images)))
        t = time.perf_counter()
        sizes = [source[i] for i in range(args.n)]
        prepass_s = time.perf_counter() - t
        common = dict(dataset=str(images), res=args.res, vae=str(vae), batch_size=args.batch_size,
                      workers=args.workers, shard_size=args.shard_size, device=args.device)  # fmt: skip
        runs: dict[str, list[dict]] = {"square": [], "bucketed": []}
        buckets = None
        for k in range(args.repeats):
            for kind in ("square", "bucketed"):
                out = tmp / f"{kind}-{k}.zarr"
                extra = {"buckets": args.buckets} if kind == "bucketed" else {}
                runs[kind].append(run(EncodeConfig(out=str(out), **common, **extra)))  # type: ignore[arg-type]
                if kind == "bucketed" and buckets is None:
                    from lplkit.store import LatentStore

                    buckets = [[*b.size, b.rows] for b in LatentStore.open(out).buckets]
                shutil.rmtree(out)
        best = {k: max(r["images_per_s"] for r in v) for k, v in runs.items()}
        result = {
            "res": args.res, "n": args.n, "buckets_spec": args.buckets,
            "batch_size": args.batch_size, "workers": args.workers, "device": args.device,
            "image_aspects": [min(s[0] / s[1] for s in sizes), max(s[0] / s[1] for s in sizes)],
            "prepass_s": prepass_s, "prepass_img_s": args.n / prepass_s,
            "buckets": buckets, "runs": runs,
            "ratio_best": best["bucketed"] / best["square"],
            "ratio_pairs": [b["images_per_s"] / s["images_per_s"]
                            for s, b in zip(runs["square"], runs["bucketed"], strict=True)],
        }  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"square {best['square']:.1f} img/s, bucketed {best['bucketed']:.1f} img/s "
          f"({len(buckets or [])} buckets), ratio {result['ratio_best']:.2f}; "
          f"pre-pass {result['prepass_img_s']:.0f} img/s")  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
