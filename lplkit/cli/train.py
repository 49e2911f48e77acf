"""`lplkit train`: a denoiser on the latent store, optionally with the gated Latent Perceptual Loss."""

from __future__ import annotations

import inspect
from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import with_config_flags
from lplkit.cli.progress import LiveProgress
from lplkit.train.config import TRAIN_FLAGS, TrainConfig
from lplkit.train.run_dir import resolve_train_config

_EXTRA = (
    inspect.Parameter(
        "config", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
        default=typer.Option(None, "--config", help="TOML recipe (pipelines/)."),
    ),
    inspect.Parameter(
        "set_", inspect.Parameter.KEYWORD_ONLY, annotation=list[str] | None,
        default=typer.Option(
            None, "--set",
            help="Dotted override, e.g. --set optim.grad_clip=0.5 or lpl.loss.norm=dataset "
            "(repeatable).",
        ),
    ),
    inspect.Parameter(
        "json_out", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
        default=typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    ),
)  # fmt: skip


def resolve_argv(args: list[str]):
    """The `TrainConfig` that `lplkit train ARGS` would train with (parsed by this very command)."""
    from typer.main import get_command

    from lplkit.cli.app import app

    group = get_command(app)
    ctx = group.make_context("lplkit", ["train", *args])
    command = group.get_command(ctx, "train")  # type: ignore[attr-defined]
    params = command.make_context("train", list(args), parent=ctx).params
    return resolve_train_config(params.get("config"), params.get("set_") or [], params)


def lpl_summary(cfg: Any) -> str:
    """One line with the resolved LPL options (shown at start, recorded in config.json)."""
    from lplkit.config import to_dict

    lpl = cfg.lpl
    gate = f"snr_min={lpl.snr_min}, max_timestep={lpl.max_timestep}, start_step={lpl.start_step}"
    loss = ", ".join(f"{k}={v}" for k, v in to_dict(lpl.loss).items())
    return f"LPL: preset={lpl.preset}, weight={lpl.weight}, {gate}; loss: {loss}"


def register(app: typer.Typer) -> None:
    """Add the `train` command to the app."""

    @app.command("train")
    @with_config_flags(TrainConfig, TRAIN_FLAGS, _EXTRA)
    def train_command(**params: Any) -> None:
        """Train a latent denoiser from STORE into RUN_DIR; re-running the same command resumes.

        Under `torchrun --nproc-per-node K -m lplkit train ...` it trains with DDP; the global
        batch stays --batch-size. The resolved config is saved as RUN_DIR/config.json.
        """
        from lplkit.distributed import env_rank
        from lplkit.train import train

        json_out = params.pop("json_out")
        cfg = resolve_train_config(params.pop("config"), params.pop("set_") or [], params)
        is_main = env_rank() == 0
        if is_main and cfg.lpl.enabled and not json_out:
            output.console.print(lpl_summary(cfg), soft_wrap=True, markup=False)

        def on_start(info: dict[str, Any]) -> None:
            if is_main and not json_out:
                line = normalization_line(info["normalization"])
                output.console.print(line, soft_wrap=True, markup=False)
            bar.update(0, info="starting")

        with LiveProgress(
            "train",
            total=cfg.steps,
            enabled=is_main and not json_out,
            log_every=30.0,  # stderr in a log file: a plain line every 30 s
            log_unit="steps",
        ) as bar:
            result = train(
                cfg,
                on_log=lambda rec: bar.update(rec["step"], info=log_line(rec)),
                on_step=bar.update,
                on_start=on_start,
            )
        if not is_main:
            return
        summary = {
            "run_dir": str(result.run_dir),
            "step": result.step,
            "images_seen": result.images_seen,
            "resumed_from": result.resumed_from,
            "nan_skips": result.nan_skips,
            "last_metrics": result.last_metrics,
        }
        if json_out:
            output.emit_json(summary)
        else:
            _print_summary(summary)


def normalization_line(nrm: dict[str, Any]) -> str:
    """Which latent normalization the run trains in, with its values (also in run.json): it
    switches from the autoencoder's factors to per-channel statistics once `lplkit stats` ran."""

    def values(v: list[float]) -> str:
        return f"{v[0]:.5g}" if len(set(v)) == 1 else "[" + ", ".join(f"{x:.4g}" for x in v) + "]"

    what = {
        "stats": "per-channel latent statistics of `lplkit stats`",
        "autoencoder": "the autoencoder's shift_factor/scaling_factor",
    }.get(nrm["source"], nrm["source"])
    return (
        f"latent normalization: {what}: z_n = (z - shift) * scale, "
        f"shift {values(nrm['shift'])}, scale {values(nrm['scale'])}"
    )


def log_line(rec: dict[str, Any]) -> str:
    """The live line's text for one metrics.jsonl record: img/s, losses, gate fraction, skips."""
    return (
        f"{rec['img_per_s']:.0f} img/s  loss {rec['loss']:.4f}  "
        f"diff {rec['loss_diffusion']:.4f}  lpl {rec['loss_lpl']:.4f}  "
        f"gate {rec['gate_frac']:.0%}  skips {rec['nan_skips']}"
    )


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"train -> {s['run_dir']}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("step", str(s["step"]))
    table.add_row("images seen", str(s["images_seen"]))
    table.add_row(
        "resumed from step", str(s["resumed_from"]) if s["resumed_from"] is not None else "-"
    )
    table.add_row("skipped non-finite steps", str(s["nan_skips"]))
    for k, v in (s["last_metrics"] or {}).items():
        if k.startswith("loss") or k in ("gate_frac", "img_per_s", "lr"):
            table.add_row(k, f"{v:.4g}")
    output.console.print(table)
