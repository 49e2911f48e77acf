"""Tables and grids of the LPL ablation from the pre-trained base (reads from_base.py's output).

    python pipelines/openmoji-lpl/report_base.py --runs runs/openmoji-lpl-base --store STORE \
        [--img docs/img] [--json pipelines/openmoji-lpl/results-base.json]

For each post-training length and arm: mean +- sample std over seeds of SWD x1e3 per Laplacian
level (and / floor at 64 px), the spectrum distances and seconds per step; for each LPL arm the
paired difference arm - baseline (same seed = same base, batches, timesteps and noise) with its
std, the relative change at 64 px, and how many seeds the arm scored lower (better).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from report import reference_images, save_panels  # noqa: E402  (same grids as the DiT-T ablation)

# the DiT-T report's labels, plus the floor ratio; post-training is the whole run here. Other
# resolutions (gpu128.sh: 128 px) get their SWD levels' labels from `label`.
LABELS = {**report.LABELS, "floor_x_64px": "64px / floor", "s_per_step": "s/step"}


def levels_of(names: Iterable[str]) -> list[str]:
    """SWD level names ("64px", ...), finest first."""
    return sorted(names, key=lambda lv: -int(lv.removesuffix("px")))


def label(m: str) -> str:
    if m in LABELS:
        return LABELS[m]
    if m.startswith("floor_x_"):
        return f"{m.removeprefix('floor_x_')} / floor"
    return f"SWD {m.removeprefix('swd_')}"


def level_columns(data: dict) -> list[str]:
    """The SWD level columns of `load`'s data ("swd_64px", ...), finest first."""
    first = next(iter(next(iter(next(iter(data.values())).values())).values()))
    names = (k.removeprefix("swd_") for k in first if k.startswith("swd_") and k.endswith("px"))
    return [f"swd_{lv}" for lv in levels_of(names)]


def metrics_of(data: dict) -> list[str]:
    """The table's columns: SWD per level (finest first), avg, finest / floor, spectrum, s/step."""
    levels = level_columns(data)
    floor = f"floor_x_{levels[0].removeprefix('swd_')}"
    return [*levels, "swd_avg", floor, "spec", "spec_high", "s_per_step"]


def _flat(r: dict) -> dict[str, float]:
    out = {f"swd_{k}": v for k, v in r["swd"].items()}
    finest = levels_of(r["swd"])[0]
    out.update({"swd_avg": r["swd_avg"], f"floor_x_{finest}": r["vs_floor"][finest]})
    out.update(spec=r["spectrum"]["distance"], spec_high=r["spectrum"]["distance_high"])
    out.update(s_per_step=r["s_per_step"])
    return out


def load(runs: Path) -> dict[int, dict[str, dict[int, dict[str, float]]]]:
    """{steps: {arm: {seed: metrics}}} of every finished arm."""
    data: dict = {}
    for res in sorted(runs.glob("post*-s*/*/result.json")):
        m = re.fullmatch(r"post(\d+)-s(\d+)", res.parent.parent.name)
        if not m:
            continue
        r = json.loads(res.read_text())
        data.setdefault(int(m.group(1)), {}).setdefault(res.parent.name, {})[int(m.group(2))] = (
            _flat(r)
        )
    return data


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(data: dict) -> dict:
    """Per length: mean/std per arm over its seeds; paired arm - baseline over shared seeds."""
    out: dict = {}
    cols = metrics_of(data) if data else []
    finest = cols[0] if cols else "swd_64px"
    for steps, arms in sorted(data.items()):
        row: dict = {"arms": {}, "paired": {}}
        for arm, seeds in arms.items():
            row["arms"][arm] = {"seeds": sorted(seeds)}
            row["arms"][arm].update({m: _ms([seeds[s][m] for s in seeds]) for m in cols})
        base = arms.get("baseline", {})
        for arm, seeds in arms.items():
            shared = sorted(set(seeds) & set(base))
            if arm == "baseline" or not shared:
                continue
            d = {m: [seeds[s][m] - base[s][m] for s in shared] for m in cols}
            rel = [100 * (seeds[s][finest] / base[s][finest] - 1) for s in shared]
            row["paired"][arm] = {
                "seeds": shared,
                "delta": {m: _ms(v) for m, v in d.items()},
                "wins": {m: sum(x < 0 for x in v) for m, v in d.items()},
                f"rel_{finest.removeprefix('swd_')}_pct": _ms(rel),
            }
        out[steps] = row
    return out


def markdown(summary: dict) -> str:
    if not summary:
        return "(no finished arms)"
    first = next(iter(next(iter(summary.values()))["arms"].values()))
    cols = [m for m in first if m != "seeds"]
    lines = [
        "| post steps | arm | " + " | ".join(label(m) for m in cols) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in cols) + " |",
    ]

    def fmt(m: str, mean: float, std: float, signed: bool) -> str:
        prec = 3 if m.startswith(("spec", "s_per", "floor")) else 1
        sign = "+" if signed else ""
        return f"{mean:{sign}.{prec}f} ± {std:.{prec}f}"

    for steps, row in summary.items():
        for arm, st in row["arms"].items():
            cells = [fmt(m, *st[m], signed=False) for m in cols]
            lines.append(f"| {steps} | {arm} (n={len(st['seeds'])}) | " + " | ".join(cells) + " |")
        for arm, p in row["paired"].items():
            n = len(p["seeds"])
            cells = [
                fmt(m, *p["delta"][m], signed=True) + ("" if m == "s_per_step" else f" ({p['wins'][m]}/{n})")
                for m in cols
            ]  # fmt: skip
            lines.append(f"| {steps} | {arm} - baseline | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def relative_lines(summary: dict) -> list[str]:
    """One line per LPL arm: its paired change at the finest level, in % of the baseline."""
    lines = []
    for steps, row in summary.items():
        for arm, p in row["paired"].items():
            key = next(k for k in p if k.startswith("rel_"))
            lv = key.removeprefix("rel_").removesuffix("_pct")
            mean, std = p[key]
            lines.append(f"post {steps}: {arm} vs baseline at {lv.removesuffix('px')} px: {mean:+.2f}% ± {std:.2f}% "
                         f"(lower in {p['wins']['swd_' + lv]}/{len(p['seeds'])} seeds)")  # fmt: skip
    return lines


def eval_noise(runs: Path) -> str:
    """The same sample sets re-evaluated with other eval seeds (`eval-seed<k>.json` beside each arm,
    written by `lplkit eval --seed k --json`): does a paired difference survive re-drawing the
    reference images, patches and directions?"""
    lines = []
    for group in sorted(runs.glob("post*-s*")):
        arms = {a.name: a for a in sorted(group.iterdir()) if (a / "result.json").exists()}
        if "baseline" not in arms or not list(arms["baseline"].glob("eval-seed*.json")):
            continue
        levels = levels_of(json.loads((arms["baseline"] / "result.json").read_text())["swd"])
        lines += [f"{group.name}: SWD x1e3 by eval seed (arm - baseline in brackets)", "",
                  "| eval seed | arm | " + " | ".join(levels) + " |",
                  "| --- | --- | " + " | ".join("---:" for _ in levels) + " |"]  # fmt: skip
        files = {0: "result.json"} | {
            int(f.stem.removeprefix("eval-seed")): f.name
            for f in sorted(arms["baseline"].glob("eval-seed*.json"))
        }
        for seed, name in files.items():
            swd = {}
            for arm, d in arms.items():
                if (d / name).exists():
                    r = json.loads((d / name).read_text())
                    swd[arm] = r["swd"] if seed == 0 else r["swd"]["levels"]
            for arm, v in swd.items():
                cells = [
                    f"{v[lv]:.2f}" + ("" if arm == "baseline" else f" ({v[lv] - swd['baseline'][lv]:+.2f})")
                    for lv in levels
                ]  # fmt: skip
                lines.append(f"| {seed} | {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(data: dict, path: Path, title: str = "OpenMoji-64 from the UNet-S base") -> None:
    """Paired differences arm - baseline per seed (dots) and their mean (bar), per SWD level and the
    high-frequency spectrum, one panel row per post-training length. Needs matplotlib (not a lplkit
    dependency: ``pip install matplotlib`` for this script only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [*level_columns(data), "spec_high"]
    lengths = sorted(data)
    fig, axes = plt.subplots(len(lengths), len(shown), figsize=(3.2 * len(shown), 2.6 * len(lengths)),
                             squeeze=False)  # fmt: skip
    for i, steps in enumerate(lengths):
        base = data[steps].get("baseline", {})
        arms = [a for a in sorted(data[steps]) if a != "baseline"]
        for j, m in enumerate(shown):
            ax = axes[i, j]
            ax.axhline(0.0, color="0.6", lw=1)
            for k, arm in enumerate(arms):
                d = [
                    data[steps][arm][s][m] - base[s][m]
                    for s in sorted(data[steps][arm])
                    if s in base
                ]
                ax.scatter([k] * len(d), d, color=f"C{k}", zorder=2)
                if d:
                    ax.hlines(float(np.mean(d)), k - 0.25, k + 0.25, color="k", zorder=3)
            ax.set_xticks(range(len(arms)), arms, fontsize=7)
            ax.set_xlim(-0.6, len(arms) - 0.4)
            ax.set_title(f"{steps} steps: {label(m)}, arm - baseline", fontsize=8)
    fig.suptitle(f"{title}: paired LPL - baseline (below 0 = LPL better)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def side_by_side(runs: Path, steps: int, seed: int, arms: list[str], ref: np.ndarray,
                 path: Path) -> None:  # fmt: skip
    """Store images | one panel per arm (same sampling noise and labels, so panels pair up)."""
    n, cols = 24, 4
    panels = [("store (decoded)", ref[:n])]
    for a in arms:
        npz = runs / f"post{steps}-s{seed}" / a / "eval" / "samples" / "samples.npz"
        if npz.exists():
            panels.append((f"{a} ({steps} steps, seed {seed})", np.load(npz)["arr_0"][:n]))
    save_panels(panels, cols, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/openmoji-lpl-base")
    ap.add_argument("--store", required=True)
    ap.add_argument("--img", default="docs/img")
    ap.add_argument("--json", default="pipelines/openmoji-lpl/results-base.json")
    ap.add_argument("--grid-seed", type=int, default=0)
    ap.add_argument("--title", default="OpenMoji-64 from the UNet-S base", help="plot title")
    args = ap.parse_args()
    runs = Path(args.runs)
    data = load(runs)
    summary = summarize(data)
    print(markdown(summary))
    print("\n".join(relative_lines(summary)))
    noise = eval_noise(runs)
    if noise:
        print("\n" + noise)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"summary": summary, "runs": data}, indent=2))
    try:
        plot(data, Path(args.img) / "ablation-base-deltas.png", args.title)
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
    ref = reference_images(args.store, 24)
    for steps in data:
        arms = [a for a in ("baseline", "lpl", "lpl-dataset") if a in data[steps]]
        side_by_side(runs, steps, args.grid_seed, arms, ref,
                     Path(args.img) / f"ablation-base-post{steps}.png")  # fmt: skip


if __name__ == "__main__":
    main()
