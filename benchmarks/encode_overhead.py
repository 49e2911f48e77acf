"""encode_overhead: throughput of lplkit's full encode vs the autoencoder encoder alone, in one run.

- full: `encode_dataset` on a generated folder of JPEGs (DataLoader workers decode + ADM-crop, the
  autoencoder encodes, a background thread writes shards with checksums) -> images/s of its shard
  loop (`encode_s`; model loading and source listing are reported separately as `elapsed_s`);
- alone: the same autoencoder (`load_autoencoder`), the same images already decoded and cropped into
  one tensor, the same batch size: host->device copy + `encode_moments` per batch, one sync at the end.

The full run also reports the fraction of its loop spent waiting for decoded batches (first batch
included) and for shard writes (the last shard's write is never overlapped): with a small `--n`
these fixed costs dominate, so measure steady state with n >= 4096 on a GPU.

ratio = full / alone; the goal is >= 0.90 (the autoencoder never waits on decoding or writing).
Both run `--repeats` times, interleaved, in the same process (CUDA/cuDNN warm for both); the best
run of each counts (`ratio_loop`), and each adjacent (alone, full) pair's ratio is printed too. `--ae sd` is a random-init AutoencoderKL with SD-VAE's architecture
(block_out_channels 128/256/512/512, layers_per_block 2, 4 latent channels, f = 8).

    .venv/bin/python benchmarks/encode_overhead.py --ae tiny --res 64 --n 256 --device cpu
    python benchmarks/encode_overhead.py --ae sd --res 256 --n 2048 --batch-size 64 \
        --workers 12 --device cuda [--autocast bfloat16]

On a CPU the comparison is not the GPU one: decoding workers and the encoder share the cores, so
the full run also pays for the decoding the baseline skipped (the decode-only rate is printed).
`--simulate-img-s R` stands in for an accelerator on a CPU box: every `encode_moments` call (in
both runs) becomes a sleep of `batch / R` seconds returning zero moments of the real shape, so the
"device" has a fixed throughput and leaves the cores to the decode workers and the writer, as a GPU
would. Everything else (decode, crop, batching, uint8 -> [-1, 1], flips, shard buffers, writes with
checksums) is the real pipeline. It is pessimistic: the sleep blocks the main thread, where a GPU
would let it prepare the next batch.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/encode_overhead.py --ae tiny --res 128 \
        --n 2048 --batch-size 64 --workers 1 --simulate-img-s 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from random_autoencoders import random_autoencoder

import lplkit.encode
from lplkit.autoencoders.loading import load_autoencoder
from lplkit.data.transforms import prepare_image
from lplkit.encode import EncodeConfig, encode_dataset

encode_moments = lplkit.encode.encode_moments

_AMP = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_autoencoder(kind: str, path: Path) -> Path:
    """Save a random-init AutoencoderKL (tiny, or SD-VAE-sized) as a diffusers directory."""
    random_autoencoder(kind).save_pretrained(path)
    return path


def make_images(root: Path, n: int, res: int, seed: int = 0) -> Path:
    """`n` JPEGs (q=90) about 1.6 res x 1.2 res (ImageNet-like aspect), smooth content + noise."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        w = int(res * rng.uniform(1.45, 1.75))
        h = int(res * rng.uniform(1.1, 1.3))
        low = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
        img = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
        noisy = np.asarray(img, np.int16) + rng.integers(-12, 13, (h, w, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            root / f"{i:06d}.jpg", quality=90
        )
    return root


def simulate_device(img_s: float) -> None:
    """Make every `encode_moments` call (benchmark and pipeline) a stand-in device with a fixed
    throughput: sleep len(x) / img_s seconds and return zero moments of the real latent shape (the
    real encoder runs once per input shape, to learn it). The cores stay free, as with a GPU."""
    global encode_moments
    real, shapes = lplkit.encode.encode_moments, {}

    def device(vae, x):
        key = tuple(x.shape[1:])
        if key not in shapes:
            shapes[key] = tuple(real(vae, x[:1])[0].shape[1:])
        time.sleep(len(x) / img_s)
        zeros = torch.zeros((len(x), *shapes[key]))
        return zeros, zeros.clone()

    encode_moments = lplkit.encode.encode_moments = device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alone(vae, x_all: torch.Tensor, batch: int, device: torch.device, amp) -> float:
    """images/s of copy + encode over pre-decoded tensors (after one warm-up batch)."""
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        encode_moments(vae, x_all[:batch].to(device))
        _sync(device)
        t = time.perf_counter()
        for i in range(0, len(x_all), batch):
            encode_moments(vae, x_all[i : i + batch].to(device, non_blocking=True))
        _sync(device)
    return len(x_all) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ae", choices=("tiny", "sd"), default="tiny")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--autocast", choices=tuple(_AMP), default="none")
    p.add_argument("--shard-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--simulate-img-s", type=float, default=None, help="see the module docstring")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.simulate_img_s:
        simulate_device(args.simulate_img_s)
    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="encode_overhead_"))
    try:
        vae_dir = make_autoencoder(args.ae, tmp / "vae")
        images = make_images(tmp / "images", args.n, args.res)
        files = sorted(images.iterdir())
        t = time.perf_counter()
        x_all = torch.stack([prepare_image(Image.open(f), args.res).x_CHW for f in files])
        decode_ips = len(files) / (time.perf_counter() - t)
        if device.type == "cuda":
            x_all = x_all.pin_memory()
        vae = load_autoencoder(str(vae_dir), device=device)
        alone, full, full_total, waits = [], [], [], []
        for r in range(args.repeats):
            alone.append(time_alone(vae, x_all, args.batch_size, device, _AMP[args.autocast]))
            cfg = EncodeConfig(
                dataset=str(images), out=str(tmp / f"store{r}.zarr"), vae=str(vae_dir),
                res=args.res, batch_size=args.batch_size, workers=args.workers,
                shard_size=args.shard_size, device=str(device), autocast=args.autocast,
            )  # fmt: skip
            s = encode_dataset(cfg)
            assert s.encoded == args.n and s.completed, s
            full.append(args.n / s.encode_s)
            full_total.append(args.n / s.elapsed_s)
            waits.append((s.input_wait_s / s.encode_s, s.write_wait_s / s.encode_s))
        result = {
            "ae": args.ae, "res": args.res, "n": args.n, "batch_size": args.batch_size,
            "workers": args.workers, "device": str(device), "autocast": args.autocast,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "simulated_img_s": args.simulate_img_s,
            "decode_only_img_s_1proc": round(decode_ips, 1),
            "alone_img_s": [round(v, 1) for v in alone],
            "full_loop_img_s": [round(v, 1) for v in full],
            "full_incl_startup_img_s": [round(v, 1) for v in full_total],
            "ratio_loop": round(max(full) / max(alone), 3),
            "ratio_loop_pairs": [round(f / a, 3) for f, a in zip(full, alone, strict=True)],
            "ratio_incl_startup": round(max(full_total) / max(alone), 3),
            "full_input_wait_frac": [round(w[0], 3) for w in waits],
            "full_write_wait_frac": [round(w[1], 3) for w in waits],
        }  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:>26}: {value}")
    print(f"full / alone = {result['ratio_loop']:.3f} (goal >= 0.90)")


if __name__ == "__main__":
    main()
