"""Tables, plot and side-by-side grids of the OpenMoji LPL ablation (reads ablation.py's output).

    python pipelines/openmoji-lpl/report.py --runs runs/openmoji-lpl --store STORE \
        [--arm lpl] [--img docs/img] [--json pipelines/openmoji-lpl/results.json]

Per (objective, arm): mean +- sample std over seeds of SWD x1e3 per Laplacian level, its average,
the spectrum distances, post-training seconds/step; per objective the paired difference
LPL - baseline (same seed: same pre-trained weights, batches, noise) with its std, and how many
seeds LPL improved. Lower is better for every metric. The plot needs matplotlib (not a lplkit
dependency: ``pip install matplotlib`` into the venv for this script only).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

METRICS = ("swd_64px", "swd_32px", "swd_16px", "swd_avg", "spec", "spec_high", "s_per_step")
LABELS = {
    "swd_64px": "SWD 64px",
    "swd_32px": "SWD 32px",
    "swd_16px": "SWD 16px",
    "swd_avg": "SWD avg",
    "spec": "spectrum",
    "spec_high": "spectrum >0.25",
    "s_per_step": "s/step (post)",
}


def _flat(r: dict) -> dict[str, float]:
    out = {f"swd_{k}": v for k, v in r["swd"].items()}
    out.update(swd_avg=r["swd_avg"], spec=r["spectrum"]["distance"])
    out.update(spec_high=r["spectrum"]["distance_high"], s_per_step=r["timing"]["s_per_step"])
    return out


def load(runs: Path, arm: str) -> dict[str, dict[str, dict[int, dict[str, float]]]]:
    """{objective: {"base" | arm: {seed: metrics}}} for the seeds where both arms finished."""
    data: dict = {}
    for res in sorted(runs.glob(f"*-s*/{arm}/result.json")):
        base = res.parent.parent / "base" / "result.json"
        if not base.exists():
            continue
        for a, path in (("base", base), (arm, res)):
            r = json.loads(path.read_text())
            data.setdefault(r["objective"], {}).setdefault(a, {})[r["seed"]] = _flat(r)
    return data


def _ms(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(data: dict, arm: str) -> dict:
    """Mean/std per arm and the paired LPL - baseline differences."""
    out: dict = {}
    for obj, arms in data.items():
        seeds = sorted(arms["base"])
        row: dict = {"seeds": seeds}
        for a in ("base", arm):
            row[a] = {m: _ms([arms[a][s][m] for s in seeds]) for m in METRICS}
        row["delta"] = {
            m: _ms([arms[arm][s][m] - arms["base"][s][m] for s in seeds]) for m in METRICS
        }
        row["wins"] = {m: sum(arms[arm][s][m] < arms["base"][s][m] for s in seeds) for m in METRICS}
        out[obj] = row
    return out


def markdown(summary: dict, arm: str) -> str:
    """The results table (mean +- std over seeds; delta = paired LPL - baseline)."""
    cols = [m for m in METRICS]
    lines = [
        "| objective | arm | " + " | ".join(LABELS[m] for m in cols) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for obj, row in summary.items():
        n = len(row["seeds"])
        for a, name in (("base", "baseline"), (arm, arm), ("delta", f"{arm} - baseline")):
            cells = []
            for m in cols:
                mean, std = row[a][m]
                prec = 3 if m.startswith(("spec", "s_per")) else 1
                cell = f"{mean:+.{prec}f} ± {std:.{prec}f}" if a == "delta" else f"{mean:.{prec}f} ± {std:.{prec}f}"  # fmt: skip
                if a == "delta" and m != "s_per_step":
                    cell += f" ({row['wins'][m]}/{n})"
                cells.append(cell)
            lines.append(f"| {obj} (n={n}) | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(data: dict, arm: str, path: Path) -> None:
    """Per objective: each metric's per-seed values (dots, paired by lines) and means, base vs LPL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("swd_64px", "swd_32px", "swd_16px", "spec", "spec_high")
    fig, axes = plt.subplots(len(data), len(shown), figsize=(3 * len(shown), 2.8 * len(data)))
    axes = np.atleast_2d(axes)
    for i, (obj, arms) in enumerate(sorted(data.items())):
        seeds = sorted(arms["base"])
        for j, m in enumerate(shown):
            ax = axes[i, j]
            b = [arms["base"][s][m] for s in seeds]
            lp = [arms[arm][s][m] for s in seeds]
            for x0, x1 in zip(b, lp, strict=True):
                ax.plot([0, 1], [x0, x1], color="0.7", lw=1, zorder=1)
            ax.scatter([0] * len(b), b, color="tab:blue", zorder=2)
            ax.scatter([1] * len(lp), lp, color="tab:orange", zorder=2)
            ax.errorbar([-0.15, 1.15], [np.mean(b), np.mean(lp)],
                        yerr=[np.std(b, ddof=1) if len(b) > 1 else 0,
                              np.std(lp, ddof=1) if len(lp) > 1 else 0],
                        fmt="_", color="k", capsize=4, zorder=3)  # fmt: skip
            ax.set_xticks([0, 1], ["baseline", arm])
            ax.set_xlim(-0.5, 1.5)
            ax.set_title(f"{obj}: {LABELS[m]}", fontsize=9)
    fig.suptitle(
        "OpenMoji-64, DiT-T/2: baseline vs LPL post-training (lower is better)", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(images: np.ndarray, cols: int) -> Image.Image:
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    canvas = Image.new("RGB", (cols * w, rows * h), "white")
    for k, im in enumerate(images):
        canvas.paste(Image.fromarray(im), ((k % cols) * w, (k // cols) * h))
    return canvas


def reference_images(store: str, n: int) -> np.ndarray:
    """The first `n` store latents decoded by the store's autoencoder (uint8 NHWC)."""
    import torch

    from lplkit.autoencoders.loading import load_autoencoder
    from lplkit.store import LatentStore

    st = LatentStore.open(store)
    vae = load_autoencoder(st.manifest["autoencoder"]["id"])
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(st.ok_positions, size=n, replace=False))
    mean, _ = st.read(idx)
    with torch.no_grad():
        x = vae.decode(torch.from_numpy(mean)).sample
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def side_by_side(runs: Path, obj: str, seed: int, arm: str, ref: np.ndarray, path: Path) -> None:
    """Store images | baseline samples | LPL samples (same noise, so columns pair up), 24 each."""
    n, cols = 24, 4
    panels = [("store (decoded)", ref[:n])]
    for a in ("base", arm):
        npz = runs / f"{obj}-s{seed}" / a / "eval" / "samples" / "samples.npz"
        panels.append((f"{obj} {a} (seed {seed})", np.load(npz)["arr_0"][:n]))
    save_panels(panels, cols, path)


def save_panels(panels: list[tuple[str, np.ndarray]], cols: int, path: Path) -> None:
    """Titled image grids side by side in one PNG."""
    grids = [(t, _grid(im, cols)) for t, im in panels]
    w, h = grids[0][1].size
    pad, top = 12, 18
    out = Image.new("RGB", (len(grids) * (w + pad) - pad, h + top), "white")
    draw = ImageDraw.Draw(out)
    for k, (title, g) in enumerate(grids):
        out.paste(g, (k * (w + pad), top))
        draw.text((k * (w + pad) + 2, 2), title, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/openmoji-lpl")
    ap.add_argument("--store", required=True)
    ap.add_argument("--arm", default="lpl")
    ap.add_argument("--img", default="docs/img")
    ap.add_argument("--json", default="pipelines/openmoji-lpl/results.json")
    ap.add_argument("--grid-seed", type=int, default=0)
    args = ap.parse_args()
    runs, img = Path(args.runs), Path(args.img)
    data = load(runs, args.arm)
    summary = summarize(data, args.arm)
    print(markdown(summary, args.arm))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"summary": summary, "runs": data}, indent=2))
    suffix = "" if args.arm == "lpl" else f"-{args.arm}"
    plot(data, args.arm, img / f"ablation-metrics{suffix}.png")
    ref = reference_images(args.store, 24)
    for obj in data:
        side_by_side(runs, obj, args.grid_seed, args.arm, ref, img / f"ablation-samples-{obj}{suffix}.png")  # fmt: skip


if __name__ == "__main__":
    main()
