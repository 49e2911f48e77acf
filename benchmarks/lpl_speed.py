"""LPL forward+backward time and memory, gated (decoder on the selected 25%) vs naive (decode all).

For every (autoencoder, latent size, batch, depth, checkpointing) it times
`lpl(pred, target, select=idx).sum().backward()` with `idx` = the first ceil(gate * B) rows, and a
naive variant that decodes the whole batch and multiplies by the gate mask afterwards, and prints
both plus their ratio (naive / gated), all measured in this one run.

Memory: on CUDA the peak of `torch.cuda.max_memory_allocated` above the pre-step baseline; on CPU
the bytes of the tensors autograd saves for backward (unique storages, via
`torch.autograd.graph.saved_tensors_hooks`) - a proxy for the activation memory.

Arms (issue #15): `--compile both` adds the `torch.compile`d loss (taps + loss math), `--crop 16`
the LPL on 16x16 latent crops, `--channels-last both` the channels-last decoder; every arm of a
case is timed round-robin in the same loop (so machine load hits them alike) and its row gives
`x eager` = time of the eager full-latent arm / time of this arm. The compile time (first call)
is reported separately and excluded from the step times.

    python benchmarks/lpl_speed.py --quick                       # CPU subset, a few minutes
    python benchmarks/lpl_speed.py --device cuda --dtype bf16 --ae sd --latent 32 --batch 32
    python benchmarks/lpl_speed.py --device cuda --dtype bf16 --ae sd --latent 32 --batch 32 \
        --depth 4 --ckpt off --compile both --crop 16 --no-naive
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

from lplkit.lpl.loss import LatentPerceptualLoss

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(
    step: Callable[[], torch.Tensor], device: torch.device, weights: set[int]
) -> tuple[float, float]:
    """(seconds of one forward+backward, memory MiB) of `step` (which returns the loss)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    counter = contextlib.nullcontext([0]) if cuda else saved_bytes_counter(weights)
    with counter as saved:
        loss = step()
    loss.backward()
    _sync(device)
    elapsed = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) - base) if cuda else saved[0]
    return elapsed, peak / 2**20


def measure(
    steps: dict[str, Callable[[], torch.Tensor]],
    device: torch.device,
    repeats: int,
    weights: set[int],
) -> dict[str, tuple[float, float, float]]:
    """{arm: (median s, memory MiB, first-call s)}: a warm-up call per arm (compiles), then
    `repeats` rounds that run every arm once each, in turn."""
    first = {}
    for name, step in steps.items():
        _sync(device)
        t0 = time.perf_counter()
        step().backward()  # warm-up (allocator, kernels, torch.compile)
        _sync(device)
        first[name] = time.perf_counter() - t0
        step().backward()  # a compiled arm's second call may still specialize
    times: dict[str, list[float]] = {k: [] for k in steps}
    mem = dict.fromkeys(steps, 0.0)
    for _ in range(repeats):
        for name, step in steps.items():
            t, m = timed_step(step, device, weights)
            times[name].append(t)
            mem[name] = max(mem[name], m)
    return {k: (statistics.median(times[k]), mem[k], first[k]) for k in steps}


def arms(args) -> list[tuple[bool, int | None, bool]]:
    """(compile, crop, channels_last) of every arm; the first is eager, full latent."""
    compiles = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    layouts = {"off": (False,), "on": (True,), "both": (False, True)}[args.channels_last]
    crops = (None, *args.crop)
    out = [(c, k, cl) for c in compiles for cl in layouts for k in crops]
    return sorted(out, key=lambda a: (a[0], a[2], a[1] or 0))


def run_case(vae, args, device, latent: int, batch: int, depth: int, ckpt: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    target = torch.randn(batch, 4, latent, latent, generator=g).to(device)
    pred = (target + 0.3 * torch.randn(target.shape, generator=g).to(device)).requires_grad_()
    crop_u = torch.rand(batch, 2, generator=g)  # fixed windows: every repeat decodes the same
    n_sel = math.ceil(args.gate * batch)
    idx = torch.arange(n_sel, device=device)
    gate = torch.zeros(batch, device=device)
    gate[:n_sel] = 1.0
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.dtype == "bf16"
        else contextlib.nullcontext()
    )

    def gated(lpl) -> Callable[[], torch.Tensor]:
        def step() -> torch.Tensor:
            with amp:
                return lpl(pred, target, select=idx, crop_u=crop_u).sum()

        return step

    def naive(lpl) -> Callable[[], torch.Tensor]:  # decodes every sample, ignores the gated-out
        def step() -> torch.Tensor:
            with amp:
                return (lpl(pred, target, crop_u=crop_u) * gate).sum()

        return step

    def compare(eager, compiled) -> dict[str, float]:
        """Max |compiled - eager| of the loss value and of d loss / d pred, relative to eager's."""
        out = []
        for lpl in (eager, compiled):
            loss = gated(lpl)()
            (grad,) = torch.autograd.grad(loss, pred)
            out.append((loss.detach().float(), grad.float()))
        (v0, g0), (v1, g1) = out
        return {
            "value_rel_err": float((v1 - v0).abs() / v0.abs().clamp_min(1e-30)),
            "grad_rel_err": float((g1 - g0).abs().max() / g0.abs().max().clamp_min(1e-30)),
        }

    steps: dict[str, Callable[[], torch.Tensor]] = {}
    losses: dict[str, LatentPerceptualLoss] = {}
    for comp, crop, cl in arms(args):
        if crop is not None and crop > latent:
            continue
        lpl = LatentPerceptualLoss(
            vae,
            args.preset,
            depth=depth,
            grad_checkpointing=ckpt,
            compile=comp,
            crop=crop,
            channels_last=cl,
        )
        # time the compiled path even where its one-time check against eager would refuse it
        # (the CPU inductor backend; `--check` reports the error instead)
        lpl.skip_compile_check(device)
        steps[repr((comp, crop, cl))] = gated(lpl)
        losses[repr((comp, crop, cl))] = lpl
        if not args.no_naive and not comp and crop is None and not cl:
            steps["naive"] = naive(lpl)
    weights = {p.untyped_storage().data_ptr() for p in vae.parameters()}
    res = measure(steps, device, args.repeats, weights)
    base_s = next(iter(res.values()))[0]
    rows = []
    for comp, crop, cl in arms(args):
        key = repr((comp, crop, cl))
        if key not in res:
            continue
        t, m, first = res[key]
        row = {
            "ae": args.current_ae,
            "latent": latent,
            "batch": batch,
            "depth": depth,
            "ckpt": ckpt,
            "compile": comp,
            "crop": crop,
            "channels_last": cl,
            "selected": n_sel,
            "gated_s": t,
            "gated_mib": m,
            "first_call_s": first,
            "speedup_vs_eager": base_s / t,
        }
        twin = repr((False, crop, cl))
        if args.check and comp and twin in losses:  # against the eager twin, same inputs
            row.update(compare(losses[twin], losses[key]))
        if key == next(iter(res)) and "naive" in res:
            t_n, m_n, _ = res["naive"]
            row.update(naive_s=t_n, naive_mib=m_n, time_ratio=t_n / t, mem_ratio=m_n / max(m, 1e-9))
        rows.append(row)
    return rows


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
    p.add_argument(
        "--compile", choices=("off", "on", "both"), default="off", help="torch.compile arms"
    )
    p.add_argument("--crop", type=int, nargs="*", default=[], help="latent crop sizes (arms)")
    p.add_argument(
        "--channels-last", choices=("off", "on", "both"), default="off", help="decoder layout"
    )
    p.add_argument("--quick", action="store_true", help="CPU subset that runs in a few minutes")
    p.add_argument("--json", action="store_true", help="print the rows as JSON on stdout")
    p.add_argument(
        "--check",
        action="store_true",
        help="compiled arms: relative error of value and gradient against the eager arm",
    )
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
        for row in run_case(vaes[ae], args, device, latent, batch, depth, ckpt):
            rows.append(row)
            ratio = f", naive/gated time {row['time_ratio']:.2f}x" if "time_ratio" in row else ""
            console.log(
                f"{ae} {latent}^2 B={batch} depth={depth} ckpt={ckpt} compile={row['compile']} "
                f"crop={row['crop']} cl={row['channels_last']}: {row['gated_s']:.3f}s "
                f"(x eager {row['speedup_vs_eager']:.2f}, first call {row['first_call_s']:.1f}s)"
                f"{ratio}"
                + (f", grad rel err {row['grad_rel_err']:.1e}" if "grad_rel_err" in row else "")
            )
    render(rows, args)
    if args.json:
        meta = {
            "device": str(device),
            "dtype": args.dtype,
            "gate": args.gate,
            "preset": args.preset,
            "torch": torch.__version__,
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
    cols = ("ae", "latent", "B", "sel", "depth", "ckpt", "compile", "crop", "ch-last")
    for col in (*cols, "gated s", f"gated {mem}", "x eager", "1st call s"):
        table.add_column(col, justify="right")
    if not args.no_naive:
        for col in ("naive s", f"naive {mem}", "time x", "mem x"):
            table.add_column(col, justify="right")
    for r in rows:
        cells = [r["ae"], str(r["latent"]), str(r["batch"]), str(r["selected"]), str(r["depth"])]
        cells += ["on" if r["ckpt"] else "off", "on" if r["compile"] else "off"]
        cells += [str(r["crop"] or "-"), "on" if r["channels_last"] else "off"]
        cells += [f"{r['gated_s']:.3f}", f"{r['gated_mib']:.1f}", f"{r['speedup_vs_eager']:.2f}"]
        cells += [f"{r['first_call_s']:.1f}"]
        if "naive_s" in r:
            cells += [f"{r['naive_s']:.3f}", f"{r['naive_mib']:.1f}"]
            cells += [f"{r['time_ratio']:.2f}", f"{r['mem_ratio']:.2f}"]
        elif not args.no_naive:
            cells += ["-"] * 4
        table.add_row(*cells)
    console.print(table)


if __name__ == "__main__":
    main()
