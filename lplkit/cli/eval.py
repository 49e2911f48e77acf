"""`lplkit eval`: SWD per pyramid level, spectrum distance and (with Inception weights) FID."""

from __future__ import annotations

from pathlib import Path

import typer

from lplkit.cli import output
from lplkit.cli.options import ranged_option
from lplkit.cli.progress import LiveProgress
from lplkit.config import OPTION_RANGES

_RANGES = OPTION_RANGES["eval"]


def register(app: typer.Typer) -> None:
    """Add the `eval` command to the app."""

    @app.command("eval")
    def eval_command(
        samples: str = typer.Option(
            ..., "--samples", help="Folder of PNG/JPEG or .npz (arr_0 uint8 NHWC)."
        ),
        ref: str = typer.Option(
            ...,
            "--ref",
            help="Reference: latent store, image folder, or .npz (images and/or mu/sigma).",
        ),
        floor: str | None = typer.Option(
            None,
            "--floor",
            help="Held-out real images (e.g. the test split's store): also report their metrics "
            "against --ref, the floor a perfect model reaches, and samples/floor per SWD level.",
        ),
        metrics: str = typer.Option(
            "swd,spectrum", "--metrics", help="Comma list of swd, spectrum, fid."
        ),
        n: int | None = ranged_option(
            None, "--n", rng=_RANGES["n"], help="Max images per set (seeded random subset)."
        ),
        seed: int = ranged_option(
            0, "--seed", rng=_RANGES["seed"], help="Seed for subsets, SWD patches and directions."
        ),
        inception: Path | None = typer.Option(
            None, "--inception", help="inception-2015-12-05.pt TorchScript file (for fid)."
        ),
        batch_size: int = ranged_option(
            64, "--batch-size", rng=_RANGES["batch_size"], help="Images per batch."
        ),
        device: str = typer.Option(
            "cpu", "--device", help="torch device (decoding, features, SWD)."
        ),
        swd_dirs: int = ranged_option(
            512,
            "--swd-dirs",
            rng=_RANGES["dirs_per_repeat"],
            help="SWD random directions per repeat.",
        ),
        swd_repeats: int = ranged_option(
            4, "--swd-repeats", rng=_RANGES["dir_repeats"], help="SWD direction repeats."
        ),
        spectrum_mode: str = typer.Option("gray", "--spectrum-mode", help="gray or rgb."),
        json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    ) -> None:
        """Compare generated samples with references (SWD x1e3 per level, spectra, FID)."""
        from lplkit.metrics.evaluate import EvalOptions, evaluate, parse_metrics
        from lplkit.metrics.swd import SWDConfig

        opts = EvalOptions(
            metrics=parse_metrics(metrics),
            n=n,
            seed=seed,
            batch_size=batch_size,
            device=device,
            inception=inception,
            swd=SWDConfig(dirs_per_repeat=swd_dirs, dir_repeats=swd_repeats),
            spectrum_mode=spectrum_mode,
        )
        with LiveProgress("eval", enabled=not json_out, transient=True) as bar:

            def on_batch(role: str, done: int, total: int) -> None:
                bar.update(done, total, info=f"{role} images")

            result = evaluate(samples, ref, opts, floor=floor, progress=on_batch)
        if json_out:
            output.emit_json(result)
        else:
            _print_table(result)


def _print_table(result: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{result['samples']['path']} vs {result['ref']['path']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    floor = result.get("floor")
    if floor is not None:
        table.add_column("floor", justify="right")
        table.add_column("/ floor", justify="right")

    def row(name: str, value: float, floor_value: float | None, digits: int) -> None:
        cells = [name, f"{value:.{digits}f}"]
        if floor is not None:
            ratio = value / floor_value if floor_value else float("nan")
            cells += [
                f"{floor_value:.{digits}f}" if floor_value is not None else "-",
                f"{ratio:.2f}",
            ]
        table.add_row(*cells)

    if "swd" in result:
        fl = floor["swd"]["levels"] if floor is not None else {}
        for level, value in result["swd"]["levels"].items():
            row(f"SWD x1e3 {level}", value, fl.get(level), 3)
        row("SWD x1e3 avg", result["swd"]["avg"], floor["swd"]["avg"] if floor else None, 3)
    if "spectrum" in result:
        fs = floor["spectrum"] if floor is not None else {}
        row("spectrum |dlog10 P| all", result["spectrum"]["distance"], fs.get("distance"), 4)
        row("spectrum |dlog10 P| high half", result["spectrum"]["distance_high"],
            fs.get("distance_high"), 4)  # fmt: skip
    if "fid" in result:
        ff = floor.get("fid", {}).get("value") if floor is not None else None
        row(f"FID (ref: {result['fid']['ref_stats']})", result["fid"]["value"], ff, 3)
    table.caption = f"n = {result['samples']['n']} samples, {result['ref']['n']} references"
    if floor is not None:
        table.caption += f", floor: {floor['n']} held-out images from {floor['path']}"
    output.console.print(table)
