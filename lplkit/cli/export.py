"""`lplkit export`: a training run -> a diffusers `DiTPipeline` directory (docs/export.md)."""

from __future__ import annotations

import typer

from lplkit.cli import output
from lplkit.cli.options import ranged_option
from lplkit.config import OPTION_RANGES


def register(app: typer.Typer) -> None:
    """Add the `export` command to the app."""

    @app.command("export")
    def export_command(
        run: str = typer.Option(..., "--run", help="Run directory written by `lplkit train`."),
        out: str = typer.Option(..., "--out", help="Pipeline directory to write."),
        ema: bool = typer.Option(True, "--ema/--no-ema", help="EMA weights (default) or raw."),
        steps: int = ranged_option(
            50,
            "--steps",
            rng=OPTION_RANGES["export"]["steps"],
            help="Flow runs: the Euler step count the exported grid reproduces.",
        ),
        vae: str | None = typer.Option(None, "--vae", help="Override the autoencoder."),
        json_out: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
    ) -> None:
        """Write a DiTPipeline directory (`DiTPipeline.from_pretrained(OUT)`) of the run."""
        from lplkit.export import export_run

        summary = export_run(run, out, ema=ema, steps=steps, vae=vae)
        if json_out:
            output.emit_json(summary)
            return
        output.console.print(
            f"wrote {summary['pipeline']} ({summary['scheduler']}, step "
            f"{summary['checkpoint_step']}, {summary['weights']} weights) to {summary['out']}",
            soft_wrap=True,
        )
        for note in summary["notes"]:
            output.console.print(f"note: {note}", soft_wrap=True)
