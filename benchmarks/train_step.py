"""Training-step cost of the gated LPL, and the training loop's overhead over a bare PyTorch loop.

Part 1 (`step`): one optimizer step (forward, backward, AdamW, EMA) of `lplkit.train` on a fixed
batch, without LPL and with the LPL on exactly round(f * B) gated samples, f in --gates. Ratios
are against the no-LPL step measured in the same process. Peak memory: on CUDA the step's peak
allocation above what was resident before it; on CPU (`--memory`) the peak RSS of a fresh child
process per configuration (includes the Python/torch baseline).

Part 2 (`loop`): images/s of `Trainer.run` (store loader from a real on-disk store held in RAM,
per-step seeded draws, NaN guard, metric accumulation, logging) vs a bare loop over the same model
and in-memory latents doing the same math (noise, loss, backward, clip, AdamW, EMA).

Part 3 (`--text-models`, issue #23): one optimizer step (no LPL) of each listed denoiser at the same
latent shape and batch, text models conditioned on random cached-encoder outputs of
`--text-tokens` x `--text-dim` (+ a pooled vector of `--text-dim`, MMDiT); ratios against the first
model of the list (a class-conditional DiT), round-robin, median. Only part 3 runs.
  python benchmarks/train_step.py --text-models DiT-S/2,MMDiT-S/2,PixArt-S/2,UNetText-S \
      --latent 8 --batch 16 --reps 5

Arms (issue #15): `--compile both` runs every configuration also with the denoiser and the LPL
under `torch.compile` (ratios `x no-LPL` are within the same compile mode, `x eager` against the
same configuration eager); `--crop N` adds LPL arms on N x N latent crops. Compilation happens in
the warm-up steps and is excluded from the step times.

CPU:  python benchmarks/train_step.py --size tiny && python benchmarks/train_step.py --size small
GPU:  python benchmarks/train_step.py --device cuda --bf16 --model DiT-B/2 --ae sd --latent 32 \
          --batch 64 --gate 0.2
The user configuration (DiT-XL/2, SD-sized decoder, 32x32x4 latents, paper preset, gate 20%,
per-GPU batch 32), eager vs compiled, no-LPL vs LPL:
      python benchmarks/train_step.py --size xl --device cuda --bf16 --gate 0.2 --compile both
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from random_autoencoders import random_autoencoder

SIZES = {  # model, autoencoder, latent size, batch
    "tiny": ("DiT-T/2", "tiny", 8, 16),
    "small": ("DiT-S/2", "small", 16, 8),
    "xl": ("DiT-XL/2", "sd", 32, 32),  # the user configuration of issue #15 (one GPU's share)
}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, dev, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_fn(args, gate_frac: float | None, compiled: bool = False, crop: int | None = None):
    """A closure running one full optimizer step; gate_frac None = no LPL; `compiled`: the
    denoiser and the LPL under torch.compile (as `lplkit train --compile --lpl-compile`)."""
    from lplkit.diffusion.denoisers import build_model
    from lplkit.diffusion.objectives import build_objective
    from lplkit.lpl.loss import LatentPerceptualLoss
    from lplkit.train.ema import EMA
    from lplkit.train.losses import micro_batch_loss
    from lplkit.train.normalization import LatentNormalizer

    dev = torch.device(args.device)
    # One denoiser / optimizer / EMA / autoencoder shared by every configuration of the process
    # (DiT-XL/2 with AdamW and EMA is ~14 GB: one copy per configuration would not fit a GPU).
    shared = args.__dict__.setdefault("_shared", {})
    if "model" not in shared:
        torch.manual_seed(0)
        model = build_model(args.model, in_channels=4, sample_size=args.latent, num_classes=10)
        model = model.to(dev)
        shared.update(model=model, opt=torch.optim.AdamW(model.parameters(), lr=1e-4))
        shared["ema"] = EMA(model, 0.9999)
    model, opt, ema = shared["model"], shared["opt"], shared["ema"]
    obj = build_objective("flow")
    norm = LatentNormalizer((0.0,) * 4, (0.18215,) * 4, "autoencoder")
    B = args.batch
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(B, 4, args.latent, args.latent, generator=g).to(dev)
    eps = torch.randn(z0.shape, generator=g).to(dev)
    t = torch.rand(B, generator=g).to(dev)
    y = torch.randint(0, 10, (B,), generator=g).to(dev)
    lpl, gate = None, None
    if gate_frac is not None:
        if "vae" not in shared:
            shared["vae"] = random_autoencoder(args.ae).to(dev)
        loss = LatentPerceptualLoss(
            shared["vae"], "paper", depth=args.depth, compile=compiled, crop=crop
        )
        loss.skip_compile_check(dev)  # time it even where the eager check would refuse
        lpl = loss.to(dev).forward_gathered
        gate = torch.zeros(B, dtype=torch.bool, device=dev)
        gate[: round(gate_frac * B)] = True
    if compiled and "compiled_model" not in shared:
        shared["compiled_model"] = torch.compile(model)
    fwd = shared["compiled_model"] if compiled else model

    def run() -> None:
        parts = micro_batch_loss(fwd, obj, z0, y, eps, t, normalizer=norm, lpl=lpl, gate=gate,
                                 bf16=args.bf16)  # fmt: skip
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)

    return run, dev


def text_step_fn(args, name: str):
    """One optimizer step (flow, no LPL) of model `name`; a text model gets a random condition of
    the bundled openmoji-clip's shape by default (16 tokens x 128, pooled 128)."""
    from lplkit.diffusion.denoisers import build_model, is_text_model
    from lplkit.diffusion.objectives import build_objective
    from lplkit.train.ema import EMA
    from lplkit.train.losses import micro_batch_loss
    from lplkit.train.normalization import LatentNormalizer

    dev = torch.device(args.device)
    B, L, D = args.batch, args.text_tokens, args.text_dim
    g = torch.Generator().manual_seed(1)
    text = None
    torch.manual_seed(0)
    if is_text_model(name):
        dims = {"tokens": L, "states_dim": D, "pooled_dim": D}
        model = build_model(name, in_channels=4, sample_size=args.latent, text=dims).to(dev)
        mask = torch.ones(B, L, dtype=torch.bool)
        mask[:, L // 2 :] = False  # half the tokens padding, as short captions are
        text = {"states": torch.randn(B, L, D, generator=g).to(dev), "mask": mask.to(dev),
                "pooled": torch.randn(B, D, generator=g).to(dev)}  # fmt: skip
        y = None
    else:
        model = build_model(name, in_channels=4, sample_size=args.latent, num_classes=10).to(dev)
        y = torch.randint(0, 10, (B,), generator=g).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ema = EMA(model, 0.9999)
    obj = build_objective("flow")
    norm = LatentNormalizer((0.0,) * 4, (0.18215,) * 4, "autoencoder")
    z0 = torch.randn(B, 4, args.latent, args.latent, generator=g).to(dev)
    eps = torch.randn(z0.shape, generator=g).to(dev)
    t = torch.rand(B, generator=g).to(dev)

    def run() -> None:
        parts = micro_batch_loss(model, obj, z0, y, eps, t, normalizer=norm, text=text,
                                 bf16=args.bf16)  # fmt: skip
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)

    params = sum(p.numel() for p in model.parameters())
    return run, dev, params


def bench_text_models(args) -> list[dict]:
    """Round-robin over the models (one step each per round); median step time per model."""
    names = [n for n in args.text_models.split(",") if n]
    fns = {n: text_step_fn(args, n) for n in names}
    for run, dev, _ in fns.values():
        for _ in range(args.warmup):
            run()
        _sync(dev)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.reps):
        for n, (run, dev, _) in fns.items():
            t0 = time.perf_counter()
            run()
            _sync(dev)
            times[n].append(time.perf_counter() - t0)
    base = statistics.median(times[names[0]])
    return [{"model": n, "params": fns[n][2], "step_s": statistics.median(times[n]),
             "vs_first": statistics.median(times[n]) / base, "times_s": times[n]}
            for n in names]  # fmt: skip


def configurations(args) -> list[tuple[bool, float | None, int | None]]:
    """(compiled, gate fraction or None = no LPL, crop) of every timed configuration."""
    compiles = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    out = []
    for c in compiles:
        out.append((c, None, None))
        out += [(c, g, None) for g in args.gates]
        out += [(c, g, args.crop) for g in args.gates if args.crop and g > 0]
    return out


def bench_steps(args) -> list[dict]:
    """Round-robin over the configurations (one step each per round) so that load changes on a
    shared machine hit all of them alike; median per configuration."""
    confs = configurations(args)
    runs = [step_fn(args, g, c, k) for c, g, k in confs]
    dev = runs[0][1]
    for (c, g, k), (run, _) in zip(confs, runs, strict=True):
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            run()
        _sync(dev)
        print(f"warm-up compiled={c} gate={g} crop={k}: {time.perf_counter() - t0:.1f}s",
              file=sys.stderr, flush=True)  # fmt: skip
    times: list[list[float]] = [[] for _ in confs]
    for _ in range(args.reps):
        for i, (run, _) in enumerate(runs):
            _sync(dev)
            t0 = time.perf_counter()
            run()
            _sync(dev)
            times[i].append(time.perf_counter() - t0)
    rows = [
        {"compiled": c, "lpl_gate": g, "crop": k, "step_s": statistics.median(ts)}
        for (c, g, k), ts in zip(confs, times, strict=True)
    ]
    if dev.type == "cuda":
        # All configurations stay resident, so report each step's working memory: the peak above
        # what was allocated before it (activations, LPL features, gradients in flight).
        for row, (run, _) in zip(rows, runs, strict=True):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            run()
            torch.cuda.synchronize()
            row["peak_mem_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    by_key = {(r["compiled"], r["lpl_gate"], r["crop"]): r["step_s"] for r in rows}
    for r in rows:
        r["vs_no_lpl"] = r["step_s"] / by_key[(r["compiled"], None, None)]
        eager = by_key.get((False, r["lpl_gate"], r["crop"]))
        if eager is not None:
            r["speedup_vs_eager"] = eager / r["step_s"]
    return rows


def child_peak_rss(args, gate: float | None, compiled: bool, crop: int | None) -> float:
    """Peak RSS (MiB) of a fresh process running a few steps of one configuration."""
    cmd = [sys.executable, __file__, "--child", "none" if gate is None else str(gate)]
    if compiled:
        cmd += ["--compile", "on"]
    if crop:
        cmd += ["--crop", str(crop)]
    for k in ("device", "model", "ae", "latent", "batch", "depth"):
        v = getattr(args, k)
        if v is not None:
            cmd += [f"--{k}", str(v)]
    if args.bf16:
        cmd.append("--bf16")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mib"]


def bench_loop(args) -> dict:
    """Trainer.run img/s vs a bare loop with the same math over in-memory latents."""
    from lplkit.diffusion.denoisers import build_model
    from lplkit.diffusion.objectives import build_objective
    from lplkit.store.reader import LatentStore
    from lplkit.store.synthetic import write_synthetic_store
    from lplkit.train.config import TrainConfig
    from lplkit.train.ema import EMA
    from lplkit.train.loop import Components, Trainer
    from lplkit.train.normalization import LatentNormalizer

    dev = torch.device(args.device)
    n, B, steps = 256, args.batch, args.loop_steps
    tmp = Path(tempfile.mkdtemp())
    write_synthetic_store(tmp / "s.zarr", count=n, latent_shape=(4, args.latent, args.latent))
    store = LatentStore.open(str(tmp / "s.zarr"))
    norm = LatentNormalizer((0.0,) * 4, (0.5,) * 4, "autoencoder")
    obj = build_objective("flow")

    def model():
        torch.manual_seed(0)
        return build_model(args.model, in_channels=4, sample_size=args.latent, num_classes=10)

    cfg = TrainConfig(steps=10**9, batch_size=B, seed=0, device=args.device, bf16=args.bf16)
    cfg.log.every, cfg.log.tensorboard = 10, False
    parts = Components(model(), obj, norm, store, (4, args.latent, args.latent), 10, True)
    trainer = Trainer(cfg, parts, tmp / "run", run_id="0" * 32)

    def trainer_steps(k: int) -> None:  # the body of Trainer.run minus checkpointing
        for _ in range(k):
            trainer.train_step()
            if trainer.window.due(trainer.step, done=False):
                trainer.window.close(step=trainer.step, images_seen=trainer.step * B,
                                     epoch=trainer.cursor.epoch, lr=trainer.step_lr)  # fmt: skip

    # bare loop: latents already in memory (the store's means), same model / optimizer / EMA
    lat = torch.from_numpy(store.read(list(range(n)))[0]).to(dev)
    labels = torch.from_numpy(store.labels[:n].astype("int64")).to(dev)
    m = model().to(dev).train()
    opt = torch.optim.AdamW(m.parameters(), lr=cfg.optim.lr)
    ema = EMA(m, cfg.ema_decay)

    def bare_steps(k: int) -> None:
        for _ in range(k):
            idx = torch.randint(0, n, (B,), device=dev)
            z0 = norm.normalize(lat[idx])
            t = obj.sample_timesteps(B, device=dev)
            eps = torch.randn_like(z0)
            s = obj.compute(z0, eps, t)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                out = m(s.z_t, s.model_t, labels[idx])
            loss = obj.loss(out.float(), s.target).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(m)

    trainer_steps(3)
    bare_steps(3)
    chunk, rounds = 10, max(1, steps // 10)
    t_tr, t_bare, ratios = 0.0, 0.0, []
    for _ in range(rounds):  # interleaved so that machine load hits both alike
        _sync(dev)
        t0 = time.perf_counter()
        trainer_steps(chunk)
        _sync(dev)
        t1 = time.perf_counter()
        bare_steps(chunk)
        _sync(dev)
        t2 = time.perf_counter()
        t_tr, t_bare = t_tr + t1 - t0, t_bare + t2 - t1
        ratios.append((t1 - t0) / (t2 - t1))
    total = rounds * chunk
    return {
        "steps": total,
        "batch": B,
        "trainer_img_per_s": total * B / t_tr,
        "bare_img_per_s": total * B / t_bare,
        "overhead": t_tr / t_bare - 1.0,
        "overhead_median_round": statistics.median(ratios) - 1.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--model")
    p.add_argument("--ae", choices=["tiny", "small", "sd"])
    p.add_argument("--latent", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--depth", type=int, default=None, help="LPL depth (default: preset's)")
    p.add_argument("--gate", type=float, help="one gate fraction instead of 0, .1, .25, 1")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off",
                   help="torch.compile of the denoiser and the LPL (arms)")  # fmt: skip
    p.add_argument("--crop", type=int, help="add LPL arms on CROP x CROP latent crops")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--loop-steps", type=int, default=30)
    p.add_argument("--no-loop", action="store_true")
    p.add_argument("--no-steps", action="store_true", help="only part 2 (trainer vs bare loop)")
    p.add_argument("--memory", action="store_true", help="CPU: peak RSS per config (subprocess)")
    p.add_argument("--text-models", help="part 3 only: comma-separated models, the first the base")
    p.add_argument("--text-tokens", type=int, default=16)
    p.add_argument("--text-dim", type=int, default=128)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    model, ae, latent, batch = SIZES[args.size]
    args.model, args.ae = args.model or model, args.ae or ae
    args.latent, args.batch = args.latent or latent, args.batch or batch
    args.gates = [args.gate] if args.gate is not None else [0.0, 0.1, 0.25, 1.0]
    if args.child is not None:
        gate = None if args.child == "none" else float(args.child)
        run, _dev = step_fn(args, gate, args.compile == "on", args.crop)
        for _ in range(3):
            run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"peak_rss_mib": peak}))
        return
    torch.set_num_threads(torch.get_num_threads())
    if args.text_models:
        rows = bench_text_models(args)
        print(f"# latent 4x{args.latent}x{args.latent}, batch {args.batch}, text {args.text_tokens}"
              f" x {args.text_dim}, {args.device}{' bf16' if args.bf16 else ''}, threads "
              f"{torch.get_num_threads()}, torch {torch.__version__}")  # fmt: skip
        print(f"| model | params M | step s | x {rows[0]['model']} |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['params'] / 1e6:.1f} | {r['step_s']:.4f} | "
                  f"{r['vs_first']:.2f} |")  # fmt: skip
        keep = ("text_models", "text_tokens", "text_dim", "latent", "batch", "device", "bf16",
                "reps", "warmup")  # fmt: skip
        print(json.dumps({"args": {k: getattr(args, k) for k in keep}, "text_models": rows}))
        return
    print(f"# {args.model}, AE {args.ae}, latent 4x{args.latent}x{args.latent}, batch "
          f"{args.batch}, {args.device}{' bf16' if args.bf16 else ''}, LPL depth "
          f"{args.depth if args.depth is not None else 'preset'}, threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}")  # fmt: skip
    rows = [] if args.no_steps else bench_steps(args)
    if args.memory and args.device == "cpu":
        for r in rows:
            r["peak_rss_mib"] = child_peak_rss(args, r["lpl_gate"], r["compiled"], r["crop"])
    print("| compiled | LPL gate | crop | step s | x no-LPL | x eager | peak mem MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mem = r.get("peak_mem_mib", r.get("peak_rss_mib"))
        gate = "off" if r["lpl_gate"] is None else f"{r['lpl_gate']:.0%}"
        print(f"| {'on' if r['compiled'] else 'off'} | {gate} | {r['crop'] or '-'} | "
              f"{r['step_s']:.4f} | {r['vs_no_lpl']:.2f} | {r.get('speedup_vs_eager', 1.0):.2f} | "
              f"{'-' if mem is None else f'{mem:.0f}'} |")  # fmt: skip
    skip = ("child", "_shared")
    result = {"args": {k: v for k, v in vars(args).items() if k not in skip}, "steps": rows}
    if not args.no_loop:
        loop = bench_loop(args)
        result["loop"] = loop
        print(f"loop: trainer {loop['trainer_img_per_s']:.1f} img/s, bare {loop['bare_img_per_s']:.1f} "
              f"img/s, overhead {loop['overhead']:+.1%} (median of rounds "
              f"{loop['overhead_median_round']:+.1%}; {loop['steps']} steps each)")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
