"""`lplkit stats`: latent and decoder-feature statistics of a store, written to its `stats/` group."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import command_extras, config_line, with_config_flags
from lplkit.cli.progress import LiveProgress
from lplkit.config import resolve_config, to_dict
from lplkit.stats.config import STATS_FLAGS, StatsConfig


def register(app: typer.Typer) -> None:
    """Add the `stats` command to the app."""

    @app.command("stats")
    @with_config_flags(
        StatsConfig, STATS_FLAGS, command_extras(json_help="Print the result as JSON on stdout.")
    )
    def stats_command(**params: Any) -> None:
        """Per-channel latent mean/std (+ suggested scale/shift) and decoder-feature mean, std and
        2%/98% quantiles per tapped layer, for the LPL's `dataset` norm and outlier mask."""
        from lplkit.distributed import init_distributed
        from lplkit.stats.job import run_stats

        json_out = params.pop("json_out")
        cfg = resolve_config(
            StatsConfig, STATS_FLAGS, params, config=params.pop("config"),
            overrides=params.pop("set_"),
        )  # fmt: skip
        dist = init_distributed(cfg.device)  # under torchrun: join the group, pin this rank's GPU
        rank = dist.rank
        with LiveProgress(
            "items (this rank)", enabled=rank == 0, transient=True, log_every=30.0
        ) as bar:
            _, meta = run_stats(
                cfg.store,
                vae=cfg.vae,
                subfolder=cfg.subfolder,
                samples=cfg.samples or None,
                depth=cfg.depth,
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                device=str(dist.device),
                bins=cfg.bins,
                features=not cfg.latents_only,
                apply_post_quant_conv=cfg.post_quant_conv,
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
            output.emit_json({**meta, "config": to_dict(cfg)})
        else:
            _print_summary(meta)
            output.console.print(config_line("stats", cfg), soft_wrap=True, markup=False)


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
