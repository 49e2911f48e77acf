"""Train the bundled tiny AutoencoderKL (`tiny-openmoji`) on OpenMoji glyphs at 64px, on CPU.

    .venv/bin/python pipelines/tiny-ae/train.py --config pipelines/tiny-ae/config.toml

Loss per batch (x, x_hat in [-1, 1], posterior q(z|x) = N(mu, sigma^2)):

    L = |x_hat - x|_1 + lap_weight * sum_{j<J} |B_j(x_hat) - B_j(x)|_1 + kl_weight * KL(q || N(0, I))

with |.|_1 the mean absolute error, B_j(x) = G_j(x) - up(G_{j+1}(x)) the band-pass levels of a
Laplacian pyramid (G_0 = x, G_{j+1} = 2x2 average pool of G_j, `up` = bilinear x2) and the KL summed
over latent elements, averaged over the batch. The band-pass term weights edges (what a plain L1
blurs) without any pretrained network. Augmentation: random horizontal flips and integer shifts with
white fill. Everything random comes from the seed, so re-running gives the same weights (same torch
version and thread count). After training the config's `scaling_factor` is set to 1 / std of the
posterior means over the training glyphs, like Stable Diffusion's. A `training.json` next to the
weights records the command, versions, wall time and losses.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from lplkit.data.openmoji import OpenMojiSource


def render_split(split: str, res: int) -> torch.Tensor:
    """All glyphs of `split` as one float32 tensor (N, 3, res, res) in [-1, 1]."""
    source = OpenMojiSource(res, split=split)
    arrays = np.stack([np.asarray(source.render(i)) for i in range(len(source))])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and integer shift in [-max_shift, max_shift]^2 per image, white fill."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    padded = F.pad(x, (max_shift,) * 4, value=1.0)
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts.tolist())]
    )


def laplacian_l1(x_hat: torch.Tensor, x: torch.Tensor, levels: int) -> torch.Tensor:
    """Sum over band-pass levels j < levels of mean |B_j(x_hat) - B_j(x)| (see module docstring)."""
    total = x.new_zeros(())
    for _ in range(levels):
        down_hat, down = F.avg_pool2d(x_hat, 2), F.avg_pool2d(x, 2)
        band_hat = x_hat - F.interpolate(down_hat, scale_factor=2, mode="bilinear")
        band = x - F.interpolate(down, scale_factor=2, mode="bilinear")
        total = total + (band_hat - band).abs().mean()
        x_hat, x = down_hat, down
    return total


def learning_rate(step: int, cfg: dict) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    lr, warm, steps = cfg["lr"], cfg["warmup_steps"], cfg["steps"]
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    floor = lr * cfg["min_lr_ratio"]
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * t))


def build_model(cfg: dict, res: int) -> AutoencoderKL:
    """The AutoencoderKL of the recipe: len(block_out_channels) encoder/decoder blocks + mid block."""
    blocks = len(cfg["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(cfg["block_out_channels"]),
        layers_per_block=cfg["layers_per_block"],
        latent_channels=cfg["latent_channels"],
        norm_num_groups=cfg["norm_num_groups"],
        sample_size=res,
    )


@torch.no_grad()
def latent_std(vae: AutoencoderKL, x: torch.Tensor, batch_size: int = 128) -> float:
    """Standard deviation of the posterior means over all images and latent elements."""
    means = [
        vae.encode(x[i : i + batch_size]).latent_dist.mean for i in range(0, len(x), batch_size)
    ]
    return float(torch.cat(means).std())


def train(config: dict, out_dir: Path, steps: int | None) -> dict:
    """Run the recipe; save the model to `out_dir`; return the training record."""
    tcfg = dict(config["train"])
    if steps is not None:
        tcfg["steps"] = steps
    torch.set_num_threads(tcfg["threads"])
    torch.manual_seed(tcfg["seed"])
    gen = torch.Generator().manual_seed(tcfg["seed"])
    res = config["data"]["res"]
    data = render_split("train", res)
    # channels_last: oneDNN convolutions ran ~25% faster on this CPU
    vae = build_model(config["model"], res).train().to(memory_format=torch.channels_last)
    data = data.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(vae.parameters(), lr=tcfg["lr"], betas=(0.9, 0.99), weight_decay=0.0)

    start = time.perf_counter()
    history: list[dict] = []
    order = torch.randperm(len(data), generator=gen)
    cursor = 0
    for step in range(tcfg["steps"]):
        if cursor + tcfg["batch_size"] > len(order):  # new epoch: fresh permutation
            order, cursor = torch.randperm(len(data), generator=gen), 0
        idx = order[cursor : cursor + tcfg["batch_size"]]
        cursor += tcfg["batch_size"]
        x = augment(data[idx], config["data"]["max_shift"], gen)
        x = x.contiguous(memory_format=torch.channels_last)
        posterior = vae.encode(x).latent_dist
        x_hat = vae.decode(posterior.sample(generator=gen)).sample
        l1 = (x_hat - x).abs().mean()
        lap = laplacian_l1(x_hat, x, tcfg["lap_levels"])
        kl = posterior.kl().mean()
        loss = l1 + tcfg["lap_weight"] * lap + tcfg["kl_weight"] * kl
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, tcfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % tcfg["log_every"] == 0 or step == tcfg["steps"] - 1:
            row = {
                "step": step,
                "loss": round(loss.item(), 5),
                "l1": round(l1.item(), 5),
                "lap": round(lap.item(), 5),
                "kl": round(kl.item(), 2),
                "elapsed_s": round(time.perf_counter() - start, 1),
            }
            history.append(row)
            print(json.dumps(row), flush=True)
    wall = time.perf_counter() - start

    vae = vae.eval().to(memory_format=torch.contiguous_format)
    scaling = 1.0 / latent_std(vae, data)
    vae.register_to_config(scaling_factor=round(scaling, 5))
    out_dir.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out_dir, safe_serialization=True)
    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "threads": tcfg["threads"],
        "machine": platform.machine(),
        "train_wall_time_s": round(wall, 1),
        "train_images": len(data),
        "config": {**config, "train": tcfg},
        "scaling_factor": round(scaling, 5),
        "history": history,
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).with_name("config.toml"))
    parser.add_argument("--out", type=Path, help="output directory (default: the config's)")
    parser.add_argument("--steps", type=int, help="override the step count (smoke runs)")
    args = parser.parse_args()
    config = tomllib.loads(args.config.read_text())
    record = train(config, args.out or Path(config["output"]["dir"]), args.steps)
    print(f"trained in {record['train_wall_time_s']} s; scaling_factor {record['scaling_factor']}")


if __name__ == "__main__":
    main()
