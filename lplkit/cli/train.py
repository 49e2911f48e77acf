"""`lplkit train`: a denoiser on the latent store, optionally with the gated Latent Perceptual Loss."""

from __future__ import annotations

import os
from typing import Any

import typer

from lplkit.cli import output

# flag name -> dotted TrainConfig key (flags override --config and --set)
_FLAG_KEYS = {
    "store": "store",
    "out": "out",
    "lpl": "lpl.enabled",
    "objective": "objective.kind",
    "model": "model.name",
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "optim.lr",
    "warmup": "optim.warmup_steps",
    "seed": "seed",
    "lpl_preset": "lpl.preset",
    "lpl_weight": "lpl.weight",
    "lpl_snr_min": "lpl.snr_min",
    "lpl_max_timestep": "lpl.max_timestep",
    "lpl_start": "lpl.start_step",
    "lpl_depth": "lpl.depth",
    "vae": "lpl.vae",
    "vae_subfolder": "lpl.vae_subfolder",
    "grad_accum": "grad_accum",
    "bf16": "bf16",
    "compile": "compile",
    "ema_decay": "ema_decay",
    "ckpt_every": "ckpt.every",
    "keep_last": "ckpt.keep_last",
    "log_every": "log.every",
    "sample_every": "log.sample_every",
    "device": "device",
    "verify_store": "verify_store",
}


def flag_overrides(flags: dict[str, Any]) -> list[str]:
    """Explicitly given flags as `key=value` overrides (None = not given)."""
    out = [f"{_FLAG_KEYS[k]}={v}" for k, v in flags.items() if v is not None]
    # The reference code gates DDPM by t < max_timestep alone: a max timestep without an explicit
    # SNR threshold replaces the default SNR gate instead of AND-ing with it.
    if flags.get("lpl_max_timestep") is not None and flags.get("lpl_snr_min") is None:
        out.append("lpl.snr_min=none")
    return out


def resolve_config(config: str | None, overrides: list[str], flags: dict[str, Any]):
    """defaults <- saved run config (when resuming) <- --config <- --set <- flags."""
    from pathlib import Path

    from lplkit.config import load_config
    from lplkit.train.config import TrainConfig

    out = flags.get("out")
    saved = Path(out) / "config.json" if out else None
    from lplkit.train.run import read_json_object

    base = read_json_object(saved) if saved is not None and saved.is_file() else None
    return load_config(TrainConfig, config, [*overrides, *flag_overrides(flags)], base=base)


def register(app: typer.Typer) -> None:
    """Add the `train` command to the app."""

    @app.command("train")
    def train_command(
        store: str | None = typer.Option(None, "--store", help="Latent store (lplkit encode)."),
        out: str | None = typer.Option(None, "--out", help="Run directory (re-run = resume)."),
        lpl: bool | None = typer.Option(None, "--lpl/--no-lpl", help="Add the gated LPL term."),
        objective: str | None = typer.Option(None, "--objective", help="eps, v or flow."),
        model: str | None = typer.Option(None, "--model", help="Denoiser, e.g. DiT-S/2."),
        steps: int | None = typer.Option(None, "--steps", help="Total optimizer steps."),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="Global batch (all ranks and accumulation steps)."
        ),
        lr: float | None = typer.Option(None, "--lr", help="AdamW learning rate."),
        warmup: int | None = typer.Option(None, "--warmup", help="Linear LR warmup steps."),
        seed: int | None = typer.Option(None, "--seed", help="Seed of every random draw."),
        config: str | None = typer.Option(None, "--config", help="TOML recipe (pipelines/)."),
        set_: list[str] | None = typer.Option(
            None, "--set", help="Dotted override, e.g. --set optim.grad_clip=0.5 (repeatable)."
        ),
        lpl_preset: str | None = typer.Option(None, "--lpl-preset", help="paper, ..."),
        lpl_weight: float | None = typer.Option(None, "--lpl-weight", help="w in L + w LPL."),
        lpl_snr_min: float | None = typer.Option(
            None, "--lpl-snr-min", help="Gate: LPL only where SNR(t) >= this."
        ),
        lpl_max_timestep: int | None = typer.Option(
            None, "--lpl-max-timestep", help="DDPM gate t < T (replaces the SNR gate if alone)."
        ),
        lpl_start: int | None = typer.Option(None, "--lpl-start", help="Step the LPL starts."),
        lpl_depth: int | None = typer.Option(None, "--lpl-depth", help="Decoder up blocks."),
        vae: str | None = typer.Option(None, "--vae", help="Override the store's autoencoder."),
        vae_subfolder: str | None = typer.Option(None, "--vae-subfolder", help="e.g. vae."),
        grad_accum: int | None = typer.Option(None, "--grad-accum", help="Micro-steps per step."),
        bf16: bool | None = typer.Option(None, "--bf16/--no-bf16", help="bf16 autocast."),
        compile_: bool | None = typer.Option(None, "--compile/--no-compile", help="torch.compile."),
        ema_decay: float | None = typer.Option(None, "--ema-decay", help="EMA decay."),
        ckpt_every: int | None = typer.Option(None, "--ckpt-every", help="Checkpoint period."),
        keep_last: int | None = typer.Option(None, "--keep-last", help="Checkpoints kept."),
        log_every: int | None = typer.Option(None, "--log-every", help="metrics.jsonl period."),
        sample_every: int | None = typer.Option(
            None, "--sample-every", help="PNG sample grid period (0 = never)."
        ),
        device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:1 ..."),
        verify_store: bool | None = typer.Option(
            None,
            "--verify-store/--no-verify-store",
            help="Fully verify the store first (checksums, NaN); a quick check always runs.",
        ),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    ) -> None:
        """Train a latent denoiser from STORE into RUN_DIR; re-running the same command resumes.

        Under `torchrun --nproc-per-node K -m lplkit train ...` it trains with DDP; the global
        batch stays --batch-size. The resolved config is saved as RUN_DIR/config.json.
        """
        from lplkit.train import train

        flags = {
            "store": store, "out": out, "lpl": lpl, "objective": objective, "model": model,
            "steps": steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "seed": seed,
            "lpl_preset": lpl_preset, "lpl_weight": lpl_weight, "lpl_snr_min": lpl_snr_min,
            "lpl_max_timestep": lpl_max_timestep, "lpl_start": lpl_start, "lpl_depth": lpl_depth,
            "vae": vae, "vae_subfolder": vae_subfolder, "grad_accum": grad_accum, "bf16": bf16,
            "compile": compile_, "ema_decay": ema_decay, "ckpt_every": ckpt_every,
            "keep_last": keep_last, "log_every": log_every, "sample_every": sample_every,
            "device": device, "verify_store": verify_store,
        }  # fmt: skip
        cfg = resolve_config(config, set_ or [], flags)
        is_main = int(os.environ.get("RANK", "0")) == 0
        with _LiveLine(cfg.steps, enabled=is_main and not json_out) as live:
            result = train(cfg, on_log=live.on_log, on_step=live.on_step, on_start=live.on_start)
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


class _LiveLine:
    """A rich progress line: step, img/s, losses, gate fraction, ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _LiveLine:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=output.console,
            )
            self.bar.__enter__()
        return self

    def on_start(self, info: dict[str, Any]) -> None:
        if self.bar is not None:
            self.task = self.bar.add_task("train", total=self.total, info="starting")

    def on_step(self, step: int) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=step)

    def on_log(self, rec: dict[str, Any]) -> None:
        if self.bar is not None and self.task is not None:
            info = (
                f"{rec['img_per_s']:.0f} img/s  loss {rec['loss']:.4f}  "
                f"diff {rec['loss_diffusion']:.4f}  lpl {rec['loss_lpl']:.4f}  "
                f"gate {rec['gate_frac']:.0%}  skips {rec['nan_skips']}"
            )
            self.bar.update(self.task, completed=rec["step"], info=info)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


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
