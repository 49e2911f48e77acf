"""`lplkit stats`: latent and decoder-feature statistics of a store, written to its `stats/` group."""

from __future__ import annotations

import typer

from lplkit.cli import output
from lplkit.cli.options import ranged_option
from lplkit.cli.progress import LiveProgress
from lplkit.config import OPTION_RANGES

_RANGES = OPTION_RANGES["stats"]


def register(app: typer.Typer) -> None:
    """Add the `stats` command to the app."""

    @app.command("stats")
    def stats_command(
        store: str = typer.Argument(
            ..., help="Latent store URL or path (a finished `lplkit encode`)."
        ),
        vae: str | None = typer.Option(
            None, "--vae", help="Autoencoder (default: the store's own; another one is refused)."
        ),
        subfolder: str | None = typer.Option(
            None, "--vae-subfolder", "--subfolder", help="Subfolder of --vae (as in encode/train)."
        ),
        samples: int = ranged_option(
            1024,
            "--samples",
            rng=_RANGES["samples"],
            help="Items (position, flip) to use; 0 = all of them.",
        ),
        depth: int | None = ranged_option(
            None,
            "--lpl-depth",
            "--depth",
            rng=_RANGES["depth"],
            help="Decoder up blocks tapped after the mid block, as train --lpl-depth (default: all).",
        ),
        batch_size: int = ranged_option(
            16, "--batch-size", rng=_RANGES["batch_size"], help="Items per decoder call."
        ),
        seed: int = ranged_option(
            0, "--seed", rng=_RANGES["seed"], help="Seed of the item subset and latent noise."
        ),
        device: str = typer.Option(
            "auto", "--device", help="torch device; auto = CUDA if present."
        ),
        bins: int = ranged_option(
            2048, "--bins", rng=_RANGES["bins"], help="Histogram bins per channel (quantiles)."
        ),
        post_quant_conv: bool = typer.Option(
            True,
            "--post-quant-conv/--no-post-quant-conv",
            help="Tap after the AE's post_quant_conv (the true decoder); --no-... matches an LPL "
            "with apply_post_quant_conv=false (diffusers-reference).",
        ),
        latents_only: bool = typer.Option(
            False, "--latents-only", help="Skip the decoder: latent statistics only."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Per-channel latent mean/std (+ suggested scale/shift) and decoder-feature mean, std and
        2%/98% quantiles per tapped layer, for the LPL's `dataset` norm and outlier mask."""
        from lplkit.distributed import init_distributed
        from lplkit.stats.job import run_stats

        dist = init_distributed(device)  # under torchrun: join the group, pin this rank's GPU
        rank = dist.rank
        with LiveProgress(
            "items (this rank)", enabled=rank == 0, transient=True, log_every=30.0
        ) as bar:
            _, meta = run_stats(
                store,
                vae=vae,
                subfolder=subfolder,
                samples=samples or None,
                depth=depth,
                batch_size=batch_size,
                seed=seed,
                device=str(dist.device),
                bins=bins,
                features=not latents_only,
                apply_post_quant_conv=post_quant_conv,
                on_progress=bar.update,
            )
        if rank != 0:
            return
        used, asked = meta["sampling"]["items"], meta["sampling"]["requested"]
        if asked is not None and used < asked:
            # said even with --json (on stderr): a user asking for 4096 must learn they got 96
            output.console.print(
                f"note: --samples {asked}: the store has {used} items (ok positions x flips); "
                f"the statistics use all {used}"
            )
        if json_out:
            output.emit_json(meta)
        else:
            _print_summary(meta)


def _fmt_range(r: list[float]) -> str:
    return f"{r[0]:.3g}..{r[1]:.3g}"


def _print_summary(meta: dict) -> None:
    from rich.table import Table

    lat = meta["latent"]
    table = Table(title=f"latents of {meta['store']['url']} ({meta['sampling']['items']} items)")
    for col in ("channel", "mean", "std", "scale = 1/std"):
        table.add_column(col, justify="right")
    for c, (m, s) in enumerate(zip(lat["mean"], lat["std"], strict=True)):
        table.add_row(str(c), f"{m:+.4f}", f"{s:.4f}", f"{1 / s:.4f}")
    table.caption = f"global: shift_factor {lat['shift_factor']:+.4f}\nscaling_factor {lat['scaling_factor']:.4f}"
    output.console.print(table)
    if not meta["layers"]:
        return
    table = Table(title=f"decoder features (depth {meta['depth']}, {meta['autoencoder']['class']})")
    for col in ("layer", "channels", "size", "mean range", "std range", "outliers"):
        table.add_column(col, justify="left" if col == "layer" else "right", no_wrap=True)
    for layer in meta["layers"]:
        table.add_row(
            layer["name"],
            str(layer["channels"]),
            f"{layer['height']}x{layer['width']}",
            _fmt_range(layer["mean_range"]),
            _fmt_range(layer["std_range"]),
            f"{100 * layer['outlier_share']:.2f}%",
        )
    table.caption = (
        "outliers: share outside q2%-2std..q98%+2std per channel\n"
        f"written to stats/{meta.get('run', '(not written)')}"
    )
    output.console.print(table)
