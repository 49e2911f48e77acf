"""Measurements of the bundled text-to-image base and of the t2i demo (docs/t2i-demo.md).

    python pipelines/openmoji-t2i/report.py --base openmoji-t2i-base \
        --store OUT/t2i/openmoji-32.zarr --test-store OUT/t2i/openmoji-32-test.zarr \
        [--demo OUT/demo-t2i.json] --json pipelines/openmoji-t2i/results-base.json

1. The base, sampled (Euler, ``--steps``, CFG ``--cfg``, noise seed ``--seed``) once for each
   held-out glyph's caption (the test store's rows; "" for the unnamed ones, as in training):
   SWD per Laplacian level of these samples against the train store, next to the floor (the
   held-out glyphs against the same store, same count), for each ``--eval-seeds`` seed
   (`lplkit.metrics.evaluate`, as docs/base-model.md does for the class base).
2. Prompt adherence of the same samples (`lplkit.demo.adherence`): of the samples whose held-out
   name's family has training glyphs, the fraction whose nearest training glyph (pixel L2 at
   32 px, train store decoded by the AE) is of that family, against shuffled prompts; the
   qualifying prompts are listed in the JSON.
3. With ``--demo`` (the ``--json`` of ``lplkit demo --task t2i``): the LPL - baseline figures of
   its post-training (SWD per level, spectrum distances, adherence).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lplkit.demo.adherence import family, qualifying  # noqa: E402
from lplkit.demo.prompt_sampling import sample_prompts  # noqa: E402
from lplkit.demo.t2i import adherence_of, store_captions, train_references  # noqa: E402
from lplkit.diffusion.image_files import save_grid, save_npz  # noqa: E402
from lplkit.metrics.evaluate import EvalOptions, evaluate  # noqa: E402
from lplkit.metrics.swd import SWDConfig  # noqa: E402


def base_figures(args: argparse.Namespace) -> dict[str, Any]:
    prompts = store_captions(args.test_store)
    t0 = time.perf_counter()
    images = sample_prompts(args.base, prompts, seed=args.seed, steps=args.steps,
                            guidance=args.cfg, sampler="euler", device=args.device)  # fmt: skip
    sample_s = time.perf_counter() - t0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    npz = save_npz(images, work / "base-samples.npz")
    save_grid(images[:64], work / "base-samples.png", nrow=8)
    evals = []
    for seed in args.eval_seeds:
        opts = EvalOptions(metrics=("swd", "spectrum"), n=len(images), seed=seed,
                           device=args.device, swd=SWDConfig(dirs_per_repeat=args.swd_dirs))  # fmt: skip
        r = evaluate(npz, args.store, opts, floor=args.test_store)
        evals.append({
            "eval_seed": seed, "n": r["samples"]["n"], "n_ref": r["ref"]["n"],
            "swd": r["swd"]["levels"], "floor_swd": r["floor"]["swd"]["levels"],
            "vs_floor": r["vs_floor"], "spectrum": r["spectrum"]["distance"],
            "floor_spectrum": r["floor"]["spectrum"]["distance"],
        })  # fmt: skip
    refs, names = train_references(args.store, args.device)
    adh = adherence_of(images, prompts, refs, names)
    keep = qualifying(prompts, names)
    vocab = frozenset().union(*(family(n) for n in names))
    adh["prompts"] = [{"prompt": p, "family_in_train": sorted(family(p) & vocab)} for p in keep]
    return {
        "base": str(args.base),
        "sampler": {"kind": "euler", "steps": args.steps, "cfg": args.cfg, "seed": args.seed},
        "n_prompts": len(prompts),
        "sample_seconds": round(sample_s, 1),
        "eval": evals,
        "adherence": adh,
    }


def demo_figures(path: Path) -> dict[str, Any]:
    """LPL - baseline of a demo --json: SWD per level, spectrum distances and adherence."""
    s = json.loads(path.read_text())
    ev, st = s["stages"]["eval"], s["stages"]
    out: dict[str, Any] = {
        "demo_json": str(path),
        "config": s["config"],
        "train_s_per_step": {a: st["train"][a]["s_per_step"] for a in ("baseline", "lpl")},
        "total_seconds": s["total_seconds"],
        "floor": ev["floor"],
    }
    for arm in ("baseline", "lpl"):
        out[arm] = {**ev[arm], "adherence": st["adherence"][arm]}
    out["lpl_minus_baseline"] = {
        "swd": {lv: ev["lpl"]["swd"][lv] - ev["baseline"]["swd"][lv] for lv in ev["lpl"]["swd"]},
        "spectrum_distance": ev["lpl"]["spectrum_distance"] - ev["baseline"]["spectrum_distance"],
        "spectrum_distance_high": ev["lpl"]["spectrum_distance_high"]
        - ev["baseline"]["spectrum_distance_high"],
        "adherence": _diff(
            st["adherence"]["lpl"]["adherence"], st["adherence"]["baseline"]["adherence"]
        ),
    }
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="openmoji-t2i-base", help="bundled base, base or run dir")
    ap.add_argument("--store", required=True, help="train store (32 px, openmoji-clip text)")
    ap.add_argument("--test-store", required=True, help="held-out store (the floor)")
    ap.add_argument("--demo", type=Path, action="append", default=[], help="demo --json outputs")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--eval-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--swd-dirs", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="t2i-report", help="samples npz + grid go here")
    ap.add_argument("--skip-base", action="store_true", help="only the --demo figures")
    ap.add_argument("--json", default="pipelines/openmoji-t2i/results-base.json")
    args = ap.parse_args()
    result: dict[str, Any] = {"command": " ".join(sys.argv)}
    if not args.skip_base:
        result["base"] = base_figures(args)
        for e in result["base"]["eval"]:
            print(f"base, eval seed {e['eval_seed']}: SWD x1e3 "
                  + ", ".join(f"{lv} {v:.2f} (floor {e['floor_swd'][lv]:.2f}, "
                              f"{e['vs_floor'][lv]:.2f}x)" for lv, v in e["swd"].items()))  # fmt: skip
        a = result["base"]["adherence"]
        print(f"base adherence {a['adherence']:.3f} ({a['hits']}/{a['n']}) vs shuffled "
              f"{a['chance']:.3f} ({a['chance_hits']}/{a['chance_pairs']})")  # fmt: skip
    result["demo"] = [demo_figures(p) for p in args.demo]
    for d in result["demo"]:
        print(f"demo {d['demo_json']}: LPL - baseline {json.dumps(d['lpl_minus_baseline'])}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(args.json)


if __name__ == "__main__":
    main()
