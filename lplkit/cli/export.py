"""`lplkit export`: a training run -> a diffusers pipeline directory (docs/export.md): `DiTPipeline`
for class runs, `PixArtSigmaPipeline` / `StableDiffusion3Pipeline` for text runs."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import command_extras, config_line, with_config_flags
from lplkit.config import resolve_config, to_dict
from lplkit.diffusion.export_config import EXPORT_FLAGS, ExportConfig


def register(app: typer.Typer) -> None:
    """Add the `export` command to the app."""

    # No --config/--set: five flags naming one run and one output leave nothing to keep in a recipe.
    @app.command("export")
    @with_config_flags(
        ExportConfig,
        EXPORT_FLAGS,
        command_extras(config=False, json_help="Print what was written as JSON."),
    )
    def export_command(**params: Any) -> None:
        """Write a diffusers pipeline directory of the run (DiTPipeline; text runs: PixArtSigmaPipeline
        or StableDiffusion3Pipeline), loadable with `from_pretrained(OUT)`."""
        from lplkit.export import export_run

        json_out = params.pop("json_out")
        cfg = resolve_config(ExportConfig, EXPORT_FLAGS, params)
        summary = export_run(cfg.run, cfg.out, ema=cfg.ema, steps=cfg.steps, vae=cfg.vae)
        if json_out:
            output.emit_json({**summary, "config": to_dict(cfg)})
            return
        output.console.print(
            f"wrote {summary['pipeline']} ({summary['scheduler']}, step "
            f"{summary['checkpoint_step']}, {summary['weights']} weights) to {summary['out']}",
            soft_wrap=True,
        )
        for note in summary["notes"]:
            output.console.print(f"note: {note}", soft_wrap=True)
        output.console.print(config_line("export", cfg), soft_wrap=True, markup=False)
