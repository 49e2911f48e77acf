"""`lplkit info STORE`: manifest, sample counts, sizes on disk and compression ratio of a store."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import command_extras, with_config_flags
from lplkit.config import resolve_config
from lplkit.store.tools_config import INFO_FLAGS, InfoConfig


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    n = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def register(app: typer.Typer) -> None:
    """Add the `info` command to the app."""

    @app.command("info")
    @with_config_flags(
        InfoConfig,
        INFO_FLAGS,
        command_extras(config=False, json_help="Print the result as JSON on stdout."),
    )
    def info_command(**params: Any) -> None:
        """Show what a latent store holds: autoencoder, resolution, counts, sizes, compression."""
        from lplkit.store.inspect import store_info

        json_out = params.pop("json_out")
        info = store_info(resolve_config(InfoConfig, INFO_FLAGS, params).store)
        if json_out:
            output.emit_json(info)
        else:
            _print(info)


def _classes(classes: list[str] | None) -> str:
    if not classes:
        return "none (unlabeled or unnamed labels)"
    shown = ", ".join(f"{k}={name}" for k, name in enumerate(classes[:20]))
    return f"{len(classes)}: {shown}{', ...' if len(classes) > 20 else ''}"


def _print(info: dict) -> None:
    from rich.table import Table

    m, counts = info["manifest"], info["counts"]
    ae = m["autoencoder"]
    src = m["source"]
    summary = Table(title=f"latent store {info['url']}", show_header=False)
    summary.add_column("field", style="bold")
    summary.add_column("value")
    status = (
        "complete"
        if m["completed"]
        else f"unfinished ({info['shards']['complete']}/{info['shards']['total']} shards)"
    )
    rows = [
        ("status", status),
        (
            "autoencoder",
            f"{ae.get('id')} ({ae.get('class', '?')}, config {str(ae.get('config_hash', '?'))[:12]})",
        ),
        ("scaling / shift", f"{ae.get('scaling_factor')} / {ae.get('shift_factor')}"),
        ("source", f"{src['id']} split={src['split']} revision={src['revision']}"),
        ("classes", _classes(m.get("classes"))),
        ("resolution / crop", f"{m['resolution']} / {m['crop']}"),
        ("latent shape", " x ".join(map(str, m["latent_shape"])) if not info.get("buckets")
         else f"per bucket ({len(info['buckets'])} buckets, below)"),
        ("dtype / codec", f"{m['dtype']} / {m['codec']}"),
        ("flips", str(m["flips"])),
        ("samples", ", ".join(f"{k} {v}" for k, v in counts.items())),
        ("shard / chunk", f"{m['shard_size']} / {m['chunk_size']} samples" if not info.get("buckets")
         else "per bucket (below)"),
        ("lplkit version", m["lplkit_version"]),
        ("layout", str(info["layout_version"]) + (
            f" (xarray/dask need layout 2: run `{info['upgrade']}`)" if info["upgrade"] else "")),
    ]  # fmt: skip
    for row in rows:
        summary.add_row(*row)
    output.console.print(summary)
    if info.get("buckets"):
        table = Table(title="aspect-ratio buckets")
        for col in ("bucket", "size (W x H)", "latent", "rows", "ok", "start", "shard / chunk",
                    "on disk"):  # fmt: skip
            table.add_column(col, justify="right")
        for b in info["buckets"]:
            table.add_row(str(b["id"]), f"{b['size'][0]} x {b['size'][1]}",
                          "x".join(map(str, b["latent_shape"])), str(b["rows"]),
                          str(b["counts"]["ok"]), str(b["start"]),
                          f"{b['shard_size']} / {b['chunk_size']}", _size(b["stored_bytes"]))  # fmt: skip
        output.console.print(table)
    sizes = Table(title="arrays")
    for col in ("array", "shape", "dtype", "logical", "on disk", "ratio"):
        sizes.add_column(col, justify="left" if col == "array" else "right")
    for name, a in info["arrays"].items():
        ratio = a["compression_ratio"]
        sizes.add_row(
            name,
            "x".join(map(str, a["shape"])),
            a["dtype"],
            _size(a["logical_bytes"]),
            _size(a["stored_bytes"]),
            f"{ratio:.3f}" if ratio else "-",
        )
    b = info["bytes"]
    sizes.caption = (
        f"index.parquet {_size(b['index'])}; {b['per_ok_sample']} stored bytes per ok sample"
    )
    output.console.print(sizes)
    if info.get("text_encoders"):
        text = Table(title="text encoders")
        for col in ("name", "model", "revision", "layer", "L x D (+P)", "dtype", "bytes/row",
                    "truncated", "empty", "status"):  # fmt: skip
            text.add_column(col, justify="left" if col in ("name", "model") else "right")
        for name, t in info["text_encoders"].items():
            c = t["counts"] or {}
            model = t["id"] + (f":{t['subfolder']}" if t["subfolder"] else "")
            shape = f"{t['max_tokens']}x{t['hidden_size']}" + (
                f" +{t['pooled_size']}" if t["pooled_size"] else "")  # fmt: skip
            text.add_row(name, f"{model} ({t['class']})", str(t["revision"] or "-")[:12],
                         str(t["layer"]), shape, t["dtype"], str(t["bytes_per_row"]),
                         str(c.get("truncated", "-")), str(c.get("empty", "-")),
                         "complete" if t["completed"] else "unfinished")  # fmt: skip
        output.console.print(text)
