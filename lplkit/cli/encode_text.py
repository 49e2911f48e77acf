"""`lplkit encode-text STORE --text-encoder SPEC`: cache a text encoder's outputs on the captions
of a finished store, next to its latents (resumable, lock-protected; docs/store-format.md)."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import config_option
from lplkit.cli.progress import LiveProgress
from lplkit.text.config import TextConfig
from lplkit.text.spec import PRESETS

SPEC_HELP = (
    "Text encoder: hub id ORG/NAME, a pipeline subfolder ORG/NAME:text_encoder_2, or a local "
    "directory (DIR or DIR:SUBFOLDER); loaded like --vae (HF_HUB_OFFLINE=1 reads the hub cache)."
)


def text_options() -> dict[str, Any]:
    """The typer options shared by `encode` and `encode-text` (keyword -> option)."""
    return {
        "text_encoder_revision": typer.Option(
            None, "--text-encoder-revision", help="Hub branch, tag or commit of a hub-id encoder."
        ),
        "text_preset": typer.Option(
            None,
            "--text-preset",
            help=f"Pipeline choices ({', '.join(PRESETS)}); default sd3-clip for CLIP "
            "(penultimate layer + pooled, 77 tokens), pixart-sigma-t5 for T5 (300 tokens, mask).",
        ),
        "text_layer": typer.Option(
            None, "--text-layer", help="CLIP hidden state: last or penultimate (default: preset)."
        ),
        "text_max_tokens": config_option(
            TextConfig,
            "text_max_tokens",
            "--text-max-tokens",
            help="Tokens L per caption (padded, longer captions truncated and counted); "
            "default: the preset's (CLIP 77, T5 300 PixArt-Sigma / 256 SD3).",
        ),
        "text_dtype": typer.Option(
            "float16", "--text-dtype", help="Stored text dtype: float16, bfloat16 or float32."
        ),
    }


def register(app: typer.Typer) -> None:
    """Add the `encode-text` command to the app."""
    opts = text_options()

    @app.command("encode-text")
    def encode_text_command(
        store: str = typer.Argument(..., help="A finished latent store (path or URL)."),
        text_encoder: str = typer.Option(..., "--text-encoder", help=SPEC_HELP),
        name: str | None = typer.Option(
            None, "--name", help="Name in the store (default: subfolder, else repo name)."
        ),
        text_encoder_revision: str | None = opts["text_encoder_revision"],
        text_preset: str | None = opts["text_preset"],
        text_layer: str | None = opts["text_layer"],
        text_max_tokens: int | None = opts["text_max_tokens"],
        text_dtype: str = opts["text_dtype"],
        batch_size: int = config_option(
            TextConfig, "text_batch_size", "--batch-size", help="Captions per encoder call."
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    ) -> None:
        """Add a text encoder's outputs (states, mask, pooled) for every caption of a store.

        Re-running the same command resumes; the same --name with another model is refused.
        """
        from lplkit.preemption import stop_signals
        from lplkit.text.cache import encode_text

        cfg = TextConfig(store=store, text_encoder=text_encoder, name=name,
                         text_encoder_revision=text_encoder_revision, text_preset=text_preset,
                         text_layer=text_layer, text_max_tokens=text_max_tokens,
                         text_dtype=text_dtype, text_batch_size=batch_size,
                         device=device)  # fmt: skip
        with stop_signals() as stop, LiveProgress("encode-text", rate_unit="caption",
                                                  transient=True) as bar:  # fmt: skip
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
