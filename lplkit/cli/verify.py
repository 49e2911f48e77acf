"""`lplkit verify STORE [--repair]`: check a store; exit non-zero listing each problem and its fix."""

from __future__ import annotations

import typer

from lplkit.cli import output
from lplkit.cli.options import range_callback
from lplkit.config import Range

# verify has no config dataclass yet: its numeric options' ranges (checked while parsing, exit 2)
_WORKERS, _SAMPLE, _SEED = Range(ge=1, le=256), Range(gt=0.0, le=1.0), Range(ge=0)


def register(app: typer.Typer) -> None:
    """Add the `verify` command to the app."""

    @app.command("verify")
    def verify_command(
        store: str = typer.Argument(..., help="Latent store URL or path."),
        repair: bool = typer.Option(
            False,
            "--repair",
            help="Remove bad shards' completion markers so re-running encode re-encodes them.",
        ),
        no_checksums: bool = typer.Option(
            False, "--no-checksums", help="Skip sha256 checks (faster; NaN/count checks still run)."
        ),
        json_out: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
        workers: int = typer.Option(
            1,
            "--workers",
            callback=range_callback(_WORKERS),
            help="Shards checked in parallel (threads); the report is the same as with 1.",
        ),
        sample: float | None = typer.Option(
            None,
            "--sample",
            callback=range_callback(_SAMPLE),
            metavar="FRACTION",
            help="Read the data of only this fraction of the shards (seeded random draw, named "
            "in the report); damage in a shard outside the sample is not found.",
        ),
        seed: int = typer.Option(
            0, "--seed", callback=range_callback(_SEED), help="Seed of --sample's draw."
        ),
    ) -> None:
        """Check for missing/partial shards, checksum mismatches, NaN/Inf, count and index problems."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from lplkit.errors import StoreCorruptError
        from lplkit.store.verify import repair_store, verify_store

        columns = (
            TextColumn("verifying shards"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=output.console, transient=True) as bar:
            task = bar.add_task("shards", total=None)

            def on_progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            report = verify_store(
                store, checksums=not no_checksums, progress=on_progress,
                workers=workers, sample=sample, seed=seed,
            )  # fmt: skip
        repaired = repair_store(store, report) if repair and not report.ok else []
        result = report.to_dict() | {"repaired_shards": repaired if repair else None}
        if json_out:
            output.emit_json(result)
        else:
            _print(report, repaired if repair else None)
        if not report.ok:
            what = (
                "repaired: re-run the encode command to finish"
                if repair
                else "see the problems above"
            )
            raise StoreCorruptError(f"{store}: {len(report.problems)} problem(s); {what}")


def _print(report, repaired: list[int] | None) -> None:
    from rich.table import Table

    if report.sample is not None:
        checked = report.sample["checked"]
        output.console.print(
            f"sample: the data of {len(checked)} of {report.complete_shards} complete shards was "
            f"read (--sample {report.sample['fraction']} --seed {report.sample['seed']}: shards "
            f"{_ranges(checked)}); damage in the other shards is not found by a sample"
        )
    if report.ok:
        output.console.print(
            f"[green]ok[/green] {report.url}: {report.complete_shards}/{report.n_shards} shards complete, "
            + ("the sampled shards' " if report.sample is not None else "")
            + "checksums match, no NaN/Inf, counts agree"
        )
        return
    table = Table(title=f"{len(report.problems)} problem(s) in {report.url}")
    for col in ("kind", "shard", "problem", "fix"):
        table.add_column(col, overflow="fold")
    for p in report.problems:
        table.add_row(p.kind, "-" if p.shard is None else str(p.shard), p.message, p.fix)
    output.console.print(table)
    if repaired is not None:
        output.console.print(
            f"removed the completion markers of shards {repaired}; re-run the same `lplkit encode` "
            "command to re-encode them and rebuild the index"
        )


def _ranges(shards: list[int]) -> str:
    """`0-3, 7, 9-10`: sorted shard numbers in runs."""
    runs: list[list[int]] = []
    for s in shards:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"
