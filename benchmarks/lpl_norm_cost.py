"""What the cached (dataset) normalization saves: LPL forward+backward time per preset.

`paper` standardizes every feature channel with the prediction's own per-sample mean/variance
and masks outliers with per-sample quantiles; `paper-dataset` uses the per-channel statistics
cached by `lplkit stats` for both. The decoder work is the same, so the difference is the loss
math. Times `lpl(pred, target).sum().backward()` (median of --reps after one warm-up) on a random
SD-sized AutoencoderKL, all presets measured in this one run. CPU time of this process
(`time.process_time`, 1 thread by default) rather than wall time, so a busy shared machine does not
distort the comparison.

    python benchmarks/lpl_norm_cost.py --latent 8 --batch 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from random_autoencoders import random_autoencoder

from lplkit.lpl.decoder_taps import FeatureStats
from lplkit.lpl.loss import LatentPerceptualLoss


def _unit_stats(lpl: LatentPerceptualLoss) -> dict[int, FeatureStats]:
    """Stand-in cached statistics of the right shapes (values do not change the work done)."""
    return {
        i: FeatureStats(
            torch.zeros(x.channels), torch.ones(x.channels), -torch.ones(x.channels) * 2,
            torch.ones(x.channels) * 2,
        )
        for i, x in enumerate(lpl.layers)
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ae", default="sd")
    ap.add_argument("--latent", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--presets", default="paper,paper-dataset,diffusers-reference")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vae = random_autoencoder(args.ae)
    probe = LatentPerceptualLoss(vae, "paper", depth=args.depth)
    stats = _unit_stats(probe)
    g = torch.Generator().manual_seed(0)
    c = vae.config.latent_channels
    target = torch.randn(args.batch, c, args.latent, args.latent, generator=g)
    pred0 = target + 0.3 * torch.randn(target.shape, generator=g)
    rows = {}
    for preset in args.presets.split(","):
        lpl = LatentPerceptualLoss(vae, preset, depth=args.depth, feature_stats=stats)
        times = []
        for rep in range(args.reps + 1):
            pred = pred0.clone().requires_grad_()
            t0 = time.process_time()
            lpl(pred, target).sum().backward()
            if rep:  # the first call is a warm-up
                times.append(time.process_time() - t0)
        rows[preset] = statistics.median(times) / args.batch
    base = rows.get("paper")
    for preset, s in rows.items():
        rel = f"  ({s / base:.2f}x paper)" if base else ""
        print(f"{preset:22s} {s:.3f} CPU s/image fwd+bwd{rel}")
    print(json.dumps({"args": vars(args), "s_per_image": rows}))


if __name__ == "__main__":
    main()
