"""`lplkit sample`: images from a training run's latest checkpoint (PNGs, a grid and an .npz)."""

from __future__ import annotations

import typer

from lplkit.cli import output
from lplkit.cli.options import ranged_option
from lplkit.cli.progress import LiveProgress
from lplkit.config import OPTION_RANGES, check_value

_RANGES = OPTION_RANGES["sample"]


def register(app: typer.Typer) -> None:
    """Add the `sample` command to the app."""

    @app.command("sample")
    def sample_command(
        run: str = typer.Option(
            ...,
            "--run",
            help="Run directory written by `lplkit train`, or a base (bundled name such as openmoji-base, or an exported base directory).",
        ),
        ema: bool = typer.Option(True, "--ema/--no-ema", help="EMA weights (default) or raw."),
        n: int = ranged_option(16, "--n", rng=_RANGES["n"], help="Number of images."),
        steps: int = ranged_option(50, "--steps", rng=_RANGES["steps"], help="Sampler steps."),
        cfg: float = ranged_option(
            1.0,
            "--cfg",
            "--guidance",
            rng=_RANGES["guidance"],
            help="Classifier-free guidance weight.",
        ),
        sampler: str | None = typer.Option(
            None, "--sampler", help="ddim (eps/v) or euler/heun (flow); default by objective."
        ),
        seed: int = ranged_option(
            0, "--seed", rng=_RANGES["seed"], help="Seed of the initial noise."
        ),
        labels: str | None = typer.Option(
            None, "--labels", help="Comma-separated class ids (cycled to N); default 0,1,2,..."
        ),
        out: str | None = typer.Option(None, "--out", help="Output dir (default RUN/samples/)."),
        batch_size: int = ranged_option(
            32, "--batch-size", rng=_RANGES["batch_size"], help="Images per model batch."
        ),
        vae: str | None = typer.Option(None, "--vae", help="Override the autoencoder."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda ..."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    ) -> None:
        """Sample N images (deterministic for a seed), decode them with the run's autoencoder."""
        from lplkit.diffusion.generate import sample_run
        from lplkit.errors import ConfigError

        try:
            label_list = [int(v) for v in labels.split(",") if v.strip()] if labels else None
        except ValueError:
            raise ConfigError(
                f"--labels expects comma-separated integers, got {labels!r}"
            ) from None
        check_value(label_list, _RANGES["labels"], "--labels")
        with LiveProgress("sampling", enabled=not json_out, transient=True) as bar:
            summary = sample_run(
                run, out=out, ema=ema, n=n, steps=steps, guidance=cfg, sampler=sampler, seed=seed,
                labels=label_list, batch_size=batch_size, device=device, vae=vae, progress=bar.update,
            )  # fmt: skip
        if json_out:
            output.emit_json(summary)
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
            "images",
            "grid",
            "npz",
        ):
            table.add_row(k, str(summary[k]))
        output.console.print(table)
