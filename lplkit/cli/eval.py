"""`lplkit eval`: SWD per pyramid level, spectrum distance, (with Inception weights) FID and (with
CLIP weights) the CLIP score against the samples' prompts."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import command_extras, config_line, with_config_flags
from lplkit.cli.progress import LiveProgress
from lplkit.config import resolve_config, to_dict
from lplkit.metrics.config import EVAL_FLAGS, EvalConfig


def register(app: typer.Typer) -> None:
    """Add the `eval` command to the app."""

    @app.command("eval")
    @with_config_flags(
        EvalConfig, EVAL_FLAGS, command_extras(json_help="Print the results as JSON on stdout.")
    )
    def eval_command(**params: Any) -> None:
        """Compare generated samples with references (SWD x1e3 per level, spectra, FID, CLIP score)."""
        from lplkit.metrics.evaluate import EvalOptions, evaluate

        json_out = params.pop("json_out")
        cfg = resolve_config(
            EvalConfig, EVAL_FLAGS, params, config=params.pop("config"),
            overrides=params.pop("set_"),
        )  # fmt: skip
        opts = EvalOptions.from_config(cfg)
        with LiveProgress("eval", enabled=not json_out, transient=True) as bar:

            def on_batch(role: str, done: int, total: int) -> None:
                bar.update(done, total, info=f"{role} images")

            result = evaluate(cfg.samples, cfg.ref, opts, floor=cfg.floor, progress=on_batch)
        if json_out:
            output.emit_json({**result, "config": to_dict(cfg)})
        else:
            _print_table(result)
            output.console.print(config_line("eval", cfg), soft_wrap=True, markup=False)


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
    if "clip" in result:
        clip = result["clip"]
        row(f"CLIP score ({clip['model']}; {clip['clamped']} pairs at 0)", clip["score"], None, 3)
    table.caption = f"n = {result['samples']['n']} samples, {result['ref']['n']} references"
    if floor is not None:
        table.caption += f", floor: {floor['n']} held-out images from {floor['path']}"
    output.console.print(table)
