"""Shared CLI rendering: the rich consoles, --json output, and error -> one line + exit code."""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console

console = Console(stderr=True, highlight=False)


@dataclass
class _State:
    debug: bool = False


state = _State()


def emit_json(data: Any) -> None:
    """Machine-readable result on stdout (everything human goes to stderr)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def handle_exception(exc: BaseException) -> int:
    """Print one line for expected errors (full traceback with --debug); return the exit code."""
    from lplkit.errors import LplkitError

    if isinstance(exc, click.exceptions.Exit):
        return exc.exit_code
    if isinstance(exc, click.exceptions.Abort | KeyboardInterrupt):
        console.print("[red]aborted[/red]")
        return 130
    if isinstance(exc, click.ClickException):
        exc.show()
        return exc.exit_code
    if state.debug:
        traceback.print_exception(exc)
    if isinstance(exc, LplkitError):
        console.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
        return exc.exit_code
    console.print(
        f"[bold red]internal error:[/bold red] {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
        soft_wrap=True,
    )
    return 70
