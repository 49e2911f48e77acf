"""`lplkit upgrade STORE`: add the zarr tooling metadata (dimension names, consolidated metadata)
to a store written before layout 2, in place (docs/store-format.md)."""

from __future__ import annotations

import typer

from lplkit.cli import output


def register(app: typer.Typer) -> None:
    """Add the `upgrade` command to the app."""

    @app.command("upgrade")
    def upgrade_command(
        store: str = typer.Argument(..., help="Latent store URL or path."),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ) -> None:
        """Bring a finished store to the current layout (metadata only; data untouched)."""
        from lplkit.store.tooling import upgrade_store

        result = upgrade_store(store)
        if json_out:
            output.emit_json(result)
            return
        if not result["changed"]:
            output.console.print(
                f"{result['url']}: already at layout {result['layout_version']}; nothing to do"
            )
            return
        output.console.print(
            f"{result['url']}: layout {result['layout_version_before']} -> "
            f"{result['layout_version']}, dimension names added to {len(result['named_arrays'])} "
            "array(s), metadata consolidated"
        )
