"""`lplkit encode`: an image dataset -> a resumable, verifiable, sharded Zarr v3 latent store."""

from __future__ import annotations

import typer

from lplkit.autoencoders.choice import autoencoder_choices
from lplkit.cli import output
from lplkit.cli.options import ranged_option
from lplkit.cli.progress import LiveProgress
from lplkit.config import OPTION_RANGES

_RANGES = OPTION_RANGES["encode"]


def register(app: typer.Typer) -> None:
    """Add the `encode` command to the app."""

    @app.command("encode")
    def encode_command(
        dataset: str = typer.Option(
            ...,
            "--dataset",
            help="Preset (imagenet, cifar10, cifar100, mnist, openmoji), image folder (class "
            "folders, or datasets imagefolder with metadata.jsonl/split folders), parquet "
            "file/glob/directory (hub layout), save_to_disk directory, WebDataset shards "
            "(shards/{00000..00099}.tar), or hub id org/name. Prefixes folder:, parquet:, disk:, "
            "wds:, hub:, preset: force a kind. See docs/data-sources.md.",
        ),
        res: int = ranged_option(
            ..., "--res", rng=_RANGES["res"], help="Image resolution (ADM center crop)."
        ),
        out: str = typer.Option(..., "--out", help="Store path or URL (s3://... via fsspec)."),
        vae: str | None = typer.Option(
            None,
            "--vae",
            help="Autoencoder: hub id, local diffusers dir, or bundled name. Required unless "
            f"--dataset openmoji (default tiny-openmoji). Common: {autoencoder_choices()}.",
        ),
        vae_subfolder: str | None = typer.Option(
            None, "--vae-subfolder", help="Subfolder of the autoencoder (e.g. vae)."
        ),
        vae_revision: str | None = typer.Option(
            None,
            "--vae-revision",
            help="Hub branch, tag or commit of a hub-id --vae (the resolved commit is recorded).",
        ),
        split: str | None = typer.Option(
            None,
            "--split",
            help="Dataset split (default train); a split that does not exist lists those that do.",
        ),
        flip: bool = typer.Option(False, "--flip", help="Also store the flipped image's moments."),
        batch_size: int = ranged_option(
            32, "--batch-size", rng=_RANGES["batch_size"], help="Images per autoencoder call."
        ),
        workers: int | None = ranged_option(
            None,
            "--workers",
            rng=_RANGES["workers"],
            help="DataLoader workers (decode + crop); default: cores - 1, at most 8.",
        ),
        shard_size: int | None = ranged_option(
            None,
            "--shard-size",
            rng=_RANGES["shard_size"],
            help="Samples per store shard, instead of --shard-mb (not both).",
        ),
        shard_mb: float | None = ranged_option(
            None,
            "--shard-mb",
            rng=_RANGES["shard_mb"],
            show_default="128",
            help="MiB per store shard (moments, flips, labels); rows per shard follow from the "
            "latent size (inner chunks: 64 rows, at most 1 MiB). See docs/store-format.md.",
        ),
        dtype: str = typer.Option(
            "float16", "--dtype", help="Stored moments dtype: float16, bfloat16 or float32."
        ),
        autocast: str = typer.Option(
            "none", "--autocast", help="Autoencoder compute: none (fp32), bfloat16 or float16."
        ),
        limit: int | None = ranged_option(
            None, "--limit", rng=_RANGES["limit"], help="Encode only the first N images."
        ),
        strict: bool = typer.Option(
            False, "--strict", help="Stop at the first bad image instead of skipping it."
        ),
        image_column: str | None = typer.Option(
            None, "--image-column", help="Image column (hub/parquet; auto-detected)."
        ),
        label_column: str | None = typer.Option(
            None, "--label-column", help="Label column (hub/parquet; auto-detected)."
        ),
        caption_column: str | None = typer.Option(
            None, "--caption-column", help="Caption column (hub/parquet; auto-detected)."
        ),
        revision: str | None = typer.Option(None, "--revision", help="Hub dataset revision."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
        log_every: float = ranged_option(
            30.0,
            "--log-every",
            rng=_RANGES["log_every"],
            help="When stderr is not a terminal (a SLURM log, a pipe): one progress line (count, "
            "rate, ETA) every this many seconds instead of a progress bar.",
        ),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    ) -> None:
        """Encode images into posterior moments (mean, std) in a sharded Zarr v3 store.

        Re-running the same command resumes; a different autoencoder/res/dtype is refused.
        Under `torchrun --nproc-per-node K -m lplkit encode ...` each rank writes its own shards.
        """
        from lplkit.autoencoders.choice import default_autoencoder, missing_vae_message
        from lplkit.distributed import env_rank
        from lplkit.errors import ConfigError

        if vae is None and default_autoencoder(dataset) is None:  # before the heavy imports
            raise ConfigError(missing_vae_message(dataset))
        if shard_size is not None and shard_mb is not None:
            raise ConfigError("--shard-size and --shard-mb both size the shards: pass one")
        if env_rank() == 0:
            from lplkit.data.hf import preflight

            preflight(dataset, revision)  # an unreachable/uncached hub dataset: one line at once
        from lplkit.encode import EncodeConfig, encode_dataset

        cfg = EncodeConfig(
            dataset=dataset,
            out=out,
            res=res,
            vae=vae,
            vae_subfolder=vae_subfolder,
            vae_revision=vae_revision,
            split=split,
            flip=flip,
            batch_size=batch_size,
            workers=workers,
            shard_size=shard_size,
            dtype=dtype,
            autocast=autocast,
            limit=limit,
            strict=strict,
            image_column=image_column,
            label_column=label_column,
            caption_column=caption_column,
            revision=revision,
            device=device,
        )
        if shard_mb is not None:
            cfg.shard_mb = shard_mb
        is_main = env_rank() == 0
        with LiveProgress(
            "encode",
            enabled=is_main,
            rate_unit="img",
            transient=True,
            log_every=log_every,
            log_unit="samples",
        ) as bar:
            summary = encode_dataset(cfg, progress=bar.update)
        if not is_main:
            return
        if json_out:
            output.emit_json(summary.to_dict())
        else:
            _print_summary(summary)


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
