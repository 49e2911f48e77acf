"""LPL ablation from the pre-trained OpenMoji base (issue #12; the paper's protocol, Sec. 4).

The paper applies the LPL in post-training, to a model that already makes the right structure.
For each seed and post-training length Q (fractions of the base's pre-training length):

1. fork the base (``--init openmoji-base``, or ``--init RUN`` for another base) into one run per
   arm, all with the same seed: the trainer seeds step k's batches, timesteps, noise and label
   drops from ``(seed, k)`` only, so the arms differ only by their LPL settings:
   - ``baseline``: ``L_diff`` only
   - ``lpl``: ``+ --lpl`` (``paper`` preset)
   - ``lpl-dataset``: ``+ --lpl --lpl-preset paper-dataset`` (cached feature statistics)
   - any ``--arm NAME='flags'`` given on the command line (a weight sweep, a depth ...)
2. sample N images from each arm's EMA weights (same noise seed and labels) and evaluate them
   against the train store with the held-out floor (``lplkit eval --floor TEST_STORE``);
   each arm writes ``result.json``.

Re-running skips finished arms. ``report.py`` turns the results into paired tables.

    python pipelines/openmoji-lpl/from_base.py --store om64.zarr --test-store om64-test.zarr \
        --runs runs/openmoji-lpl-base --post-fractions 0.2,0.333 --seeds 0,1,2

The eps arm forks the eps base (pipelines/openmoji-base/pretrain-eps.toml) the same way:

    python pipelines/openmoji-lpl/from_base.py ... --init runs/openmoji-base-eps \
        --recipe pipelines/openmoji-lpl/post-eps.toml --sampler ddim --runs runs/openmoji-lpl-base-eps
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ablation import _lplkit  # noqa: E402  (one runner for both drivers)

ARMS = {"baseline": [], "lpl": ["--lpl"], "lpl-dataset": ["--lpl", "--lpl-preset", "paper-dataset"]}


def _base_steps(init: str) -> int:
    """Pre-training length of the base (its run.json step, or its newest checkpoint)."""
    from lplkit.train.base import load_base

    step = load_base(init).step
    if not step:
        raise SystemExit(f"{init}: its pre-training length is unknown; pass --post-steps")
    return int(step)


def _run_arm(args, run: Path, seed: int, steps: int, flags: list[str], log: Path) -> dict:
    done = run / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    _lplkit(
        "train", "--config", str(args.recipe), "--store", args.store, "--out", str(run),
        "--init", args.init, "--seed", str(seed), "--steps", str(steps), "--device", args.device,
        *shlex.split(args.train_args), *flags, log=log,
    )  # fmt: skip
    samples = run / "eval" / "samples"
    _lplkit(
        "sample", "--run", str(run), "--n", str(args.n_eval), "--seed", "1234", "--steps",
        str(args.sample_steps), "--sampler", args.sampler, "--cfg", str(args.cfg), "--out",
        str(samples), "--device", args.device, "--json", log=log,
    )  # fmt: skip
    text = _lplkit(
        "eval", "--samples", str(samples / "samples.npz"), "--ref", args.store, "--floor",
        args.test_store, "--n", str(args.n_eval), "--swd-dirs", str(args.swd_dirs), "--seed",
        "0", "--device", args.device, "--json", log=log,
    )  # fmt: skip
    ev = json.loads(text)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    result = {
        "seed": seed, "steps": steps, "flags": flags, "train_args": args.train_args,
        "init": args.init, "sampler": args.sampler,
        "s_per_step": sum(r["time_s"] for r in rows[1:]) / max(1, rows[-1]["step"] - rows[0]["step"]),
        "swd": ev["swd"]["levels"], "swd_avg": ev["swd"]["avg"],
        "floor": ev["floor"]["swd"]["levels"], "vs_floor": ev["vs_floor"],
        "spectrum": {k: ev["spectrum"][k] for k in ("distance", "distance_high")},
        "floor_spectrum": {k: ev["floor"]["spectrum"][k] for k in ("distance", "distance_high")},
    }  # fmt: skip
    done.write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True, help="train split store (encoded with --flip)")
    ap.add_argument("--test-store", required=True, help="held-out split store (the floor)")
    ap.add_argument("--runs", default="runs/openmoji-lpl-base")
    ap.add_argument("--init", default="openmoji-base")
    ap.add_argument("--recipe", type=Path, default=HERE / "post-flow.toml")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--post-fractions", default="0.2,0.333")
    ap.add_argument("--post-steps", default="", help="explicit lengths instead of fractions")
    ap.add_argument("--arms", default="baseline,lpl,lpl-dataset")
    ap.add_argument("--train-args", default="", help="flags for every arm (e.g. '--batch-size 32')")
    ap.add_argument("--arm", action="append", default=[], help="NAME='train flags' (extra arm)")
    ap.add_argument("--n-eval", type=int, default=128)
    ap.add_argument("--sample-steps", type=int, default=32)
    ap.add_argument(
        "--sampler", default="euler", help="euler/heun (flow bases), ddim (eps/v bases)"
    )
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--swd-dirs", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    arms = {name: ARMS[name] for name in args.arms.split(",") if name}
    for spec in args.arm:
        name, _, flags = spec.partition("=")
        arms[name] = shlex.split(flags)
    if args.post_steps:
        lengths = [int(s) for s in args.post_steps.split(",")]
    else:
        pre = _base_steps(args.init)
        lengths = [round(float(f) * pre) for f in args.post_fractions.split(",")]
    root = Path(args.runs)
    root.mkdir(parents=True, exist_ok=True)
    for steps in lengths:
        for seed in [int(s) for s in args.seeds.split(",")]:
            group = root / f"post{steps}-s{seed}"
            group.mkdir(exist_ok=True)
            for arm, flags in arms.items():
                result = _run_arm(args, group / arm, seed, steps, flags, group / "log.txt")
                print(json.dumps({"arm": arm, **result}), flush=True)


if __name__ == "__main__":
    main()
