"""`lplkit sample`: images from a training run's latest checkpoint (PNGs, a grid and an .npz; a
text run's prompts too)."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import command_extras, config_line, with_config_flags
from lplkit.cli.progress import LiveProgress
from lplkit.config import resolve_config, to_dict
from lplkit.diffusion.sample_config import SAMPLE_FLAGS, SampleConfig


def register(app: typer.Typer) -> None:
    """Add the `sample` command to the app."""

    @app.command("sample")
    @with_config_flags(SampleConfig, SAMPLE_FLAGS, command_extras())
    def sample_command(**params: Any) -> None:
        """Sample N images (deterministic for a seed), decode them with the run's autoencoder."""
        from lplkit.diffusion.generate import sample_run

        json_out = params.pop("json_out")
        cfg = resolve_config(
            SampleConfig, SAMPLE_FLAGS, params, config=params.pop("config"),
            overrides=params.pop("set_"),
        )  # fmt: skip
        with LiveProgress("sampling", enabled=not json_out, transient=True) as bar:
            summary = sample_run(
                cfg.run, out=cfg.out, ema=cfg.ema, n=cfg.n, steps=cfg.steps,
                guidance=cfg.guidance, sampler=cfg.sampler, seed=cfg.seed,
                labels=None if cfg.labels is None else list(cfg.labels),
                prompts=None if cfg.prompts is None else list(cfg.prompts),
                prompts_file=cfg.prompts_file, prompts_from_store=cfg.prompts_from_store,
                batch_size=cfg.batch_size, device=cfg.device, vae=cfg.vae, progress=bar.update,
                size=None if cfg.size is None else list(cfg.size),
            )  # fmt: skip
        if json_out:
            output.emit_json({**summary, "config": to_dict(cfg)})
            return
        from rich.table import Table

        table = Table(title=f"sample <- {summary['run_dir']}", show_header=False)
        table.add_column("what")
        table.add_column("value")
        for k in (
            "checkpoint_step",
            "weights",
            "n",
            "sampler",
            "steps",
            "cfg",
            "seed",
            "sizes",
            "images",
            "grid",
            "npz",
            "prompts_json",
        ):
            if k in summary:
                table.add_row(k, str(summary[k]))
        output.console.print(table)
        output.console.print(config_line("sample", cfg), soft_wrap=True, markup=False)
