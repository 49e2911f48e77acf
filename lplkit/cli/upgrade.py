"""`lplkit upgrade STORE`: bring a store to the current layout in place (docs/store-format.md):
layout <= 2 arrays copied into shards sized in bytes, zarr tooling metadata (dimension names,
consolidated metadata) added."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import command_extras, with_config_flags
from lplkit.config import resolve_config
from lplkit.store.tools_config import UPGRADE_FLAGS, UpgradeConfig


def register(app: typer.Typer) -> None:
    """Add the `upgrade` command to the app."""

    @app.command("upgrade")
    @with_config_flags(
        UpgradeConfig,
        UPGRADE_FLAGS,
        command_extras(config=False, json_help="Print the result as JSON on stdout."),
    )
    def upgrade_command(**params: Any) -> None:
        """Bring a finished store to the current layout: row-sized shards (layout <= 2) are copied
        into shards sized in bytes (no re-encoding; values, index and row order unchanged), then
        the zarr metadata is completed. Safe to interrupt: re-run it to finish."""
        from lplkit.store.upgrade import upgrade_store

        json_out = params.pop("json_out")
        cfg = resolve_config(UpgradeConfig, UPGRADE_FLAGS, params)
        result = upgrade_store(cfg.store, cfg.shard_mb)
        if json_out:
            output.emit_json(result)
            return
        if not result["changed"]:
            output.console.print(
                f"{result['url']}: already at layout {result['layout_version']}; nothing to do"
            )
            return
        moved = result["resharded"]
        what = (
            f"shards of {moved['shard_size'][0]} -> {moved['shard_size'][1]} rows "
            f"({moved['shards'][0]} -> {moved['shards'][1]} shards), "
            if moved
            else ""
        )
        output.console.print(
            f"{result['url']}: layout {result['layout_version_before']} -> "
            f"{result['layout_version']}, {what}dimension names added to "
            f"{len(result['named_arrays'])} array(s), metadata consolidated"
        )
        if result["stats_need_recompute"]:
            output.console.print("cached statistics no longer match the shards: run `lplkit stats`")
