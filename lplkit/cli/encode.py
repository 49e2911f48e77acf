"""`lplkit encode`: an image dataset -> a resumable, verifiable, sharded Zarr v3 latent store."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import encode_text, output
from lplkit.cli.options import command_extras, config_line, with_config_flags
from lplkit.cli.progress import LiveProgress
from lplkit.config import resolve_config
from lplkit.store.encode_config import ENCODE_FLAGS, EncodeConfig


def register(app: typer.Typer) -> None:
    """Add the `encode` and `encode-text` commands to the app."""

    @app.command("encode")
    @with_config_flags(EncodeConfig, ENCODE_FLAGS, command_extras())
    def encode_command(**params: Any) -> None:
        """Encode images into posterior moments (mean, std) in a sharded Zarr v3 store.

        Re-running the same command resumes; a different autoencoder/res/dtype is refused.
        Under `torchrun --nproc-per-node K -m lplkit encode ...` each rank writes its own shards.
        """
        from lplkit.autoencoders.choice import default_autoencoder, missing_vae_message
        from lplkit.config import to_dict
        from lplkit.distributed import env_rank
        from lplkit.errors import ConfigError

        json_out = params.pop("json_out")
        cfg = resolve_config(
            EncodeConfig, ENCODE_FLAGS, params, config=params.pop("config"),
            overrides=params.pop("set_"),
        )  # fmt: skip
        if cfg.vae is None and default_autoencoder(cfg.dataset) is None:  # before heavy imports
            raise ConfigError(missing_vae_message(cfg.dataset))
        is_main = env_rank() == 0
        if is_main:
            from lplkit.data.hf import preflight

            preflight(cfg.dataset, cfg.revision)  # an unreachable/uncached hub dataset: one line
        from lplkit.encode import encode_dataset

        shown = not is_main or json_out

        def show_config() -> None:  # once encoding started: a refusal stays one line
            nonlocal shown
            if not shown:
                output.console.print(config_line("encode", cfg), soft_wrap=True, markup=False)
                shown = True

        with LiveProgress(
            "encode",
            enabled=is_main,
            rate_unit="img",
            transient=True,
            log_every=cfg.log_every,
            log_unit="samples",
        ) as bar:

            def progress(done: int, total: int) -> None:
                show_config()
                bar.update(done, total)

            summary = encode_dataset(cfg, progress=progress)
        if not is_main:
            return
        if json_out:
            output.emit_json({**summary.to_dict(), "config": to_dict(cfg)})
        else:
            show_config()
            _print_summary(summary)

    encode_text.register(app)  # after `encode`: listed in that order


def _print_summary(summary) -> None:
    from rich.table import Table

    s = summary
    table = Table(title=f"encode -> {s.store}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("samples in store", str(s.total))
    table.add_row("encoded (this run)", str(s.encoded))
    table.add_row("skipped (this run)", str(s.skipped))
    for reason, count in sorted(s.skip_reasons.items()):
        table.add_row(f"  {reason}", str(count))
    table.add_row(
        "shards written / already done / total",
        f"{s.shards_written} / {s.shards_already_done} / {s.shards_total}",
    )
    table.add_row("throughput", f"{s.images_per_s:.1f} img/s on {s.device} x{s.world_size}")
    if s.encode_s > 0:
        table.add_row(
            "waiting for input / for writes",
            f"{s.input_wait_s / s.encode_s:.0%} / {s.write_wait_s / s.encode_s:.0%}",
        )
    table.add_row("elapsed", f"{s.elapsed_s:.1f} s")
    table.add_row("store complete", "yes" if s.completed else "no")
    for t in s.text:
        counts = t["counts"] or {}
        table.add_row(
            f"text {t['name']}",
            f"{t['rows_encoded']} captions, {counts.get('truncated', 0)} truncated, "
            f"{counts.get('empty', 0)} empty",
        )
    output.console.print(table)
    if s.encode_s > 1 and s.input_wait_s > 0.2 * s.encode_s:
        output.console.print(
            "[yellow]the autoencoder waited for decoded images "
            f"{s.input_wait_s / s.encode_s:.0%} of the time: raise --workers[/yellow]"
        )
    if s.skipped:
        output.console.print(
            f"[yellow]{s.skipped} bad image(s) skipped; their rows have status 'skipped' and a "
            "reason in index.parquet[/yellow]"
        )
