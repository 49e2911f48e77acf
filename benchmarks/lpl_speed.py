"""LPL forward+backward time and memory, gated (decoder on the selected 25%) vs naive (decode all).

For every (autoencoder, latent size, batch, depth, checkpointing) it times
`lpl(pred, target, select=idx).sum().backward()` with `idx` = the first ceil(gate * B) rows, and a
naive variant that decodes the whole batch and multiplies by the gate mask afterwards, and prints
both plus their ratio (naive / gated), all measured in this one run.

Memory: on CUDA the peak of `torch.cuda.max_memory_allocated` above the pre-step baseline; on CPU
the bytes of the tensors autograd saves for backward (unique storages, via
`torch.autograd.graph.saved_tensors_hooks`) - a proxy for the activation memory.

    python benchmarks/lpl_speed.py --quick                       # CPU subset, a few minutes
    python benchmarks/lpl_speed.py --device cuda --dtype bf16 --ae sd --latent 32 --batch 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch
from random_autoencoders import random_autoencoder
from rich.console import Console
from rich.table import Table

from lplkit.lpl import LatentPerceptualLoss

console = Console(stderr=True)
if not console.is_terminal:  # logs/files: wide enough for the results table
    console = Console(stderr=True, width=150)


@contextlib.contextmanager
def saved_bytes_counter(exclude: set[int]) -> Iterator[list[int]]:
    """Counts the bytes of unique storages autograd saves for backward inside the block.

    Storages in `exclude` (the decoder's weights, which convolutions save too) are not counted.
    """
    seen: set[int] = set(exclude)
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and storage.nbytes() > 0:
            seen.add(key)
            total[0] += storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def measure(
    step: Callable[[], torch.Tensor], device: torch.device, repeats: int, weights: set[int]
) -> tuple[float, float]:
    """(median seconds of forward+backward, memory MiB) of `step` (which returns the loss)."""
    cuda = device.type == "cuda"
    step().backward()  # warm-up (allocator, kernels)
    times, mem = [], 0.0
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        counter = contextlib.nullcontext([0]) if cuda else saved_bytes_counter(weights)
        with counter as saved:
            loss = step()
        loss.backward()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated(device) - base) if cuda else saved[0]
        mem = max(mem, peak / 2**20)
    return statistics.median(times), mem


def run_case(vae, args, device, latent: int, batch: int, depth: int, ckpt: bool) -> dict:
    lpl = LatentPerceptualLoss(vae, args.preset, depth=depth, grad_checkpointing=ckpt)
    g = torch.Generator().manual_seed(0)
    target = torch.randn(batch, 4, latent, latent, generator=g).to(device)
    pred = (target + 0.3 * torch.randn(target.shape, generator=g).to(device)).requires_grad_()
    n_sel = math.ceil(args.gate * batch)
    idx = torch.arange(n_sel, device=device)
    gate = torch.zeros(batch, device=device)
    gate[:n_sel] = 1.0
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.dtype == "bf16"
        else contextlib.nullcontext()
    )

    def gated() -> torch.Tensor:
        with amp:
            return lpl(pred, target, select=idx).sum()

    def naive() -> torch.Tensor:  # decodes every sample, then ignores the gated-out ones
        with amp:
            return (lpl(pred, target) * gate).sum()

    weights = {p.untyped_storage().data_ptr() for p in vae.parameters()}
    t_g, m_g = measure(gated, device, args.repeats, weights)
    row = {
        "ae": args.current_ae,
        "latent": latent,
        "batch": batch,
        "depth": depth,
        "ckpt": ckpt,
        "selected": n_sel,
        "gated_s": t_g,
        "gated_mib": m_g,
    }
    if not args.no_naive:
        t_n, m_n = measure(naive, device, args.repeats, weights)
        row.update(naive_s=t_n, naive_mib=m_n, time_ratio=t_n / t_g, mem_ratio=m_n / max(m_g, 1e-9))
    return row


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "bf16-pure"),
        default="fp32",
        help="bf16: bf16 weights under autocast (group norms then run in fp32); "
        "bf16-pure: bf16 weights, no autocast (the whole decoder in bf16)",
    )
    p.add_argument("--ae", choices=("sd", "tiny", "both"), default="both")
    p.add_argument("--latent", type=int, nargs="+", default=[16, 32])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--depth", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--ckpt", choices=("off", "on", "both"), default="both")
    p.add_argument("--gate", type=float, default=0.25, help="share of the batch that gets the LPL")
    p.add_argument("--preset", default="paper")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-naive", action="store_true", help="skip the decode-everything baseline")
    p.add_argument("--quick", action="store_true", help="CPU subset that runs in a few minutes")
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 1
    return args


def cases(args) -> Iterator[tuple[str, int, int, int, bool]]:
    aes = ("sd", "tiny") if args.ae == "both" else (args.ae,)
    ckpts = {"off": (False,), "on": (True,), "both": (False, True)}[args.ckpt]
    for ae in aes:
        latents, batches, depths = args.latent, args.batch, args.depth
        if args.quick:  # keep the SD-sized decoder small on CPU
            latents, batches, depths = (
                ([16], [4], [1, 2]) if ae == "sd" else ([16, 32], [1, 4, 16], [1, 2, 3])
            )
        for latent in latents:
            for batch in batches:
                for depth in depths:
                    for ckpt in ckpts:
                        yield ae, latent, batch, depth, ckpt


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    vaes: dict[str, torch.nn.Module] = {}
    rows = []
    for ae, latent, batch, depth, ckpt in cases(args):
        if ae not in vaes:
            vaes[ae] = random_autoencoder(ae).to(device=device, dtype=dtype)
        max_depth = len(vaes[ae].decoder.up_blocks)
        if depth > max_depth:
            continue
        args.current_ae = ae
        row = run_case(vaes[ae], args, device, latent, batch, depth, ckpt)
        rows.append(row)
        ratio = f", naive/gated time {row['time_ratio']:.2f}x" if "time_ratio" in row else ""
        console.log(
            f"{ae} {latent}^2 B={batch} depth={depth} ckpt={ckpt}: {row['gated_s']:.3f}s{ratio}"
        )
    render(rows, args)
    if args.json:
        meta = {
            "device": str(device),
            "dtype": args.dtype,
            "gate": args.gate,
            "preset": args.preset,
        }
        if device.type == "cuda":
            meta["gpu"] = torch.cuda.get_device_name(device)
        else:
            meta["threads"] = torch.get_num_threads()
        json.dump({"meta": meta, "rows": rows}, sys.stdout, indent=1)
        sys.stdout.write("\n")


def render(rows: list[dict], args) -> None:
    mem = "peak MiB" if args.device.startswith("cuda") else "saved MiB"
    table = Table(
        title=f"LPL fwd+bwd ({args.device}, {args.dtype}, gate {args.gate:.0%}, {args.preset})"
    )
    for col in ("ae", "latent", "B", "sel", "depth", "ckpt", "gated s", f"gated {mem}"):
        table.add_column(col, justify="right")
    if not args.no_naive:
        for col in ("naive s", f"naive {mem}", "time x", "mem x"):
            table.add_column(col, justify="right")
    for r in rows:
        cells = [r["ae"], str(r["latent"]), str(r["batch"]), str(r["selected"]), str(r["depth"])]
        cells += ["on" if r["ckpt"] else "off", f"{r['gated_s']:.3f}", f"{r['gated_mib']:.1f}"]
        if "naive_s" in r:
            cells += [f"{r['naive_s']:.3f}", f"{r['naive_mib']:.1f}"]
            cells += [f"{r['time_ratio']:.2f}", f"{r['mem_ratio']:.2f}"]
        table.add_row(*cells)
    console.print(table)


if __name__ == "__main__":
    main()
