"""`lplkit encode-text STORE --text-encoder SPEC`: cache a text encoder's outputs on the captions
of a finished store, next to its latents (resumable, lock-protected; docs/store-format.md)."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import command_extras, with_config_flags
from lplkit.cli.progress import LiveProgress
from lplkit.config import resolve_config
from lplkit.text.config import ENCODE_TEXT_FLAGS, TextConfig


def register(app: typer.Typer) -> None:
    """Add the `encode-text` command to the app."""

    @app.command("encode-text")
    @with_config_flags(TextConfig, ENCODE_TEXT_FLAGS, command_extras(config=False))
    def encode_text_command(**params: Any) -> None:
        """Add a text encoder's outputs (states, mask, pooled) for every caption of a store.

        Re-running the same command resumes; the same --name with another model is refused.
        """
        from lplkit.preemption import stop_signals
        from lplkit.text.cache import encode_text

        json_out = params.pop("json_out")
        cfg = resolve_config(TextConfig, ENCODE_TEXT_FLAGS, params)
        with (
            stop_signals() as stop,
            LiveProgress("encode-text", rate_unit="caption", transient=True) as bar,
        ):
            summary = encode_text(cfg, progress=bar.update, stop=stop)
        if json_out:
            output.emit_json(summary.to_dict())
            return
        counts = summary.counts or {}
        output.console.print(
            f"{summary.store}: text encoder {summary.name!r} "
            f"{'complete' if summary.completed else 'incomplete'}; {summary.rows_encoded} captions "
            f"encoded this run ({summary.rows_per_s:.1f}/s), {counts.get('truncated', 0)} "
            f"truncated, {counts.get('empty', 0)} empty"
        )
