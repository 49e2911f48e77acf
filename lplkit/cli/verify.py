"""`lplkit verify STORE [--repair]`: check a store; exit non-zero listing each problem and its fix."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import command_extras, with_config_flags
from lplkit.config import resolve_config
from lplkit.store.tools_config import VERIFY_FLAGS, VerifyConfig


def register(app: typer.Typer) -> None:
    """Add the `verify` command to the app."""

    # No --config/--set: a store and a few switches leave nothing to keep in a recipe.
    @app.command("verify")
    @with_config_flags(
        VerifyConfig,
        VERIFY_FLAGS,
        command_extras(config=False, json_help="Print the report as JSON on stdout."),
    )
    def verify_command(**params: Any) -> None:
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

        json_out = params.pop("json_out")
        cfg = resolve_config(VerifyConfig, VERIFY_FLAGS, params)
        store, repair = cfg.store, cfg.repair

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
                store, checksums=not cfg.no_checksums, progress=on_progress,
                workers=cfg.workers, sample=cfg.sample, seed=cfg.seed,
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
