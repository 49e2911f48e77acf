"""LPL ablation driver on OpenMoji-64 (the paper's protocol, Berrada et al. 2025, Sec. 4).

For each objective (flow, eps) and seed:

1. pre-train P steps with LPL off                         -> RUN/<obj>-s<seed>/pretrain
2. fork the step-P checkpoint into two run directories:
   - ``base``: resumed to P + Q steps, LPL still off
   - ``lpl``:  resumed to P + Q steps with ``--lpl --lpl-start P`` (the post-training phase)
   Both forks draw identical batches, timesteps, noise and label drops at every step: the trainer
   seeds step k's draws from ``(seed, k)`` only, so the LPL term is the only difference.
3. sample N images from each fork's EMA weights (same noise seed), evaluate them against the
   store (``lplkit eval``: SWD per Laplacian level, spectrum distance), write ``result.json``.

The trainer refuses to resume into a different config, and ``lpl.enabled`` / ``lpl.start_step``
are not resumable keys, so the ``lpl`` fork's ``config.json`` is rewritten to the LPL settings
before resuming: that fork records exactly the config it was post-trained with.

Every stage is skipped when its output exists, so re-running continues an interrupted ablation.

    python pipelines/openmoji-lpl/ablation.py --store STORE --runs runs/openmoji-lpl \
        --pretrain 1500 --post 300 --seeds 0,1,2

An LPL variant is a fork tag plus train flags, resolved as ``lplkit train`` resolves it. The
dataset-normalization arm needs the store's decoder-feature statistics first (training refuses
without them); compute them before any pre-training you want to compare, since a run started after
``lplkit stats`` normalizes its latents with them (a resumed run keeps its own normalization):

    lplkit stats STORE
    python pipelines/openmoji-lpl/ablation.py --store STORE --tag lpl-dsnorm --extra "--lpl-norm dataset"
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _lplkit(*args: str, log: Path) -> str:
    """Run one lplkit command; stdout returned, stderr appended to `log`; raises on failure."""
    cmd = [sys.executable, "-m", "lplkit", *args]
    with log.open("a") as err:
        err.write(f"\n$ {' '.join(cmd)}\n")
        err.flush()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        err.write(f"# exit {proc.returncode} after {time.perf_counter() - t0:.1f} s\n")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:1])} failed (exit {proc.returncode}); see {log}")
    return proc.stdout


def _train(store: str, recipe: Path, out: Path, seed: int, steps: int, extra: list[str], log: Path):
    _lplkit(
        "train", "--config", str(recipe), "--store", store, "--out", str(out),
        "--seed", str(seed), "--steps", str(steps), "--device", "cpu", *extra, log=log,
    )  # fmt: skip


def _fork(src: Path, dst: Path, lpl: dict | None) -> None:
    """Copy a pre-training run; for the LPL fork, replace its recorded ``lpl`` section by `lpl`."""
    if dst.exists():
        return
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if lpl is not None:
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["lpl"] = lpl
        cfg_path.write_text(json.dumps(cfg, indent=2))
    tmp.rename(dst)


def _post_phase_timing(run: Path, start: int) -> dict[str, float]:
    """Mean seconds per step over the post-training log windows (metrics.jsonl), first one skipped.

    The first window after a resume includes start-up work (building the decoder, first-step
    allocations), so it is left out of the per-step time.
    """
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    post = [r for r in rows if r["step"] > start]
    windows = post[1:] if len(post) > 1 else post
    steps = sum(r["step"] - p["step"] for p, r in itertools.pairwise(post)) or 1
    secs = sum(r["time_s"] for r in windows)
    return {
        "s_per_step": secs / steps,
        "post_time_s": sum(r["time_s"] for r in post),
        "gate_frac": sum(r["gate_frac"] for r in post) / len(post),
        "loss_diffusion_last": post[-1]["loss_diffusion"],
        "loss_lpl_last": post[-1]["loss_lpl"],
    }


def _sample_and_eval(run: Path, store: str, n: int, swd_dirs: int, log: Path) -> dict:
    out = run / "eval"
    res = out / "eval.json"
    if res.exists():
        return json.loads(res.read_text())
    _lplkit(
        "sample", "--run", str(run), "--n", str(n), "--seed", "1234", "--out", str(out / "samples"),
        "--device", "cpu", "--json", log=log,
    )  # fmt: skip
    text = _lplkit(
        "eval", "--samples", str(out / "samples" / "samples.npz"), "--ref", store, "--n", str(n),
        "--swd-dirs", str(swd_dirs), "--seed", "0", "--device", "cpu", "--json", log=log,
    )  # fmt: skip
    data = json.loads(text)
    data["spectrum"] = {k: v for k, v in data["spectrum"].items() if k in ("distance", "distance_high", "mode")}  # fmt: skip
    res.write_text(json.dumps(data, indent=2))
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--runs", default="runs/openmoji-lpl")
    ap.add_argument("--objectives", default="flow,eps")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pretrain", type=int, default=1500)
    ap.add_argument("--post", type=int, default=300)
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--swd-dirs", type=int, default=128)
    ap.add_argument("--extra", default="", help="extra train flags for the LPL fork (a sweep)")
    ap.add_argument("--tag", default="lpl", help="name of the LPL fork directory")
    args = ap.parse_args()

    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    p, total = args.pretrain, args.pretrain + args.post
    for seed in [int(s) for s in args.seeds.split(",")]:
        for obj in args.objectives.split(","):
            recipe = HERE / f"{obj}.toml"
            base_dir = root / f"{obj}-s{seed}"
            base_dir.mkdir(exist_ok=True)
            log = base_dir / "log.txt"
            pre = base_dir / "pretrain"
            if not (pre / "checkpoints" / f"step_{p:08d}").exists():
                _train(args.store, recipe, pre, seed, p, [], log)
            lpl_flags = ["--lpl", "--lpl-start", str(p), *args.extra.split()]
            arms = {"base": (None, []), args.tag: (_lpl_overrides(recipe, lpl_flags), lpl_flags)}
            for arm, (lpl, flags) in arms.items():
                run = base_dir / arm
                done = run / "result.json"
                if done.exists():
                    continue
                _fork(pre, run, lpl)
                _train(args.store, recipe, run, seed, total, flags, log)
                ev = _sample_and_eval(run, args.store, args.n_eval, args.swd_dirs, log)
                result = {
                    "objective": obj, "seed": seed, "arm": arm, "flags": flags,
                    "pretrain_steps": p, "post_steps": args.post,
                    "timing": _post_phase_timing(run, p),
                    "swd": ev["swd"]["levels"], "swd_avg": ev["swd"]["avg"],
                    "spectrum": ev["spectrum"],
                }  # fmt: skip
                done.write_text(json.dumps(result, indent=2))
                print(json.dumps(result), flush=True)


def _lpl_overrides(recipe: Path, flags: list[str]) -> dict:
    """The LPL fork's whole ``lpl`` config section, resolved as ``lplkit train`` resolves it
    (recipe <- fork flags, read as `TRAIN_FLAGS` rows), so every LPL flag and its preset resolve
    exactly as in training."""
    from lplkit.config import flag_values, to_dict
    from lplkit.train.config import TRAIN_FLAGS
    from lplkit.train.run_dir import resolve_train_config

    return to_dict(resolve_train_config(recipe, [], flag_values(TRAIN_FLAGS, flags)))["lpl"]


if __name__ == "__main__":
    main()
