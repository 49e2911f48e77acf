"""`lplkit demo`: the offline end-to-end run (encode -> stats -> train with LPL -> sample -> eval)."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output

_STAGE_TEXT = {
    "encode": "encoding OpenMoji with the bundled tiny-openmoji autoencoder",
    "stats": "latent + decoder-feature statistics",
    "train": "training (LPL in the last phase)",
    "sample": "sampling",
    "eval": "evaluating against the store (SWD per level, spectrum)",
}


def register(app: typer.Typer) -> None:
    """Add the `demo` command to the app."""

    @app.command("demo")
    def demo_command(
        out: str = typer.Option("demo-out", "--out", help="Output directory (re-run = resume)."),
        res: int = typer.Option(64, "--res", help="Image resolution."),
        limit: int | None = typer.Option(
            None, "--limit", help="Encode only the first N glyphs (a quick check)."
        ),
        model: str = typer.Option("DiT-T/2", "--model", help="Denoiser (see lplkit.models)."),
        objective: str = typer.Option("flow", "--objective", help="flow, eps or v."),
        steps: int = typer.Option(800, "--steps", help="Training steps."),
        lpl_fraction: float = typer.Option(
            0.2, "--lpl-fraction", help="Last fraction of the steps trained with LPL (0 = off)."
        ),
        batch_size: int = typer.Option(32, "--batch-size", help="Training batch."),
        n_samples: int = typer.Option(64, "--n", help="Images to sample (grid + eval)."),
        sample_steps: int = typer.Option(32, "--sample-steps", help="Sampler steps."),
        eval_n: int = typer.Option(256, "--eval-n", help="Reference images for eval."),
        swd_dirs: int = typer.Option(128, "--swd-dirs", help="SWD directions per repeat."),
        stats_samples: int = typer.Option(256, "--stats-samples", help="Items for `stats`."),
        seed: int = typer.Option(0, "--seed", help="Seed of every stage."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda ..."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    ) -> None:
        """Run the whole pipeline offline on OpenMoji with the bundled autoencoder (~10 min on 2 CPU
        cores with the defaults) and print a summary and where the pictures are."""
        from lplkit.demo import DemoConfig, run_demo

        cfg = DemoConfig(
            out=out, res=res, limit=limit, model=model, objective=objective, steps=steps,
            lpl_fraction=lpl_fraction, batch_size=batch_size, n_samples=n_samples,
            sample_steps=sample_steps, eval_n=eval_n, swd_dirs=swd_dirs,
            stats_samples=stats_samples, seed=seed, device=device,
        )  # fmt: skip
        with _Progress(cfg.steps, enabled=not json_out) as prog:
            summary = run_demo(cfg, on_stage=prog.on_stage, on_train_log=prog.on_log)
        if json_out:
            output.emit_json(summary)
        else:
            _print_summary(summary)


class _Progress:
    """One status line per stage, and a progress bar while training."""

    def __init__(self, total_steps: int, enabled: bool) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                console=output.console)  # fmt: skip
            self.bar.__enter__()
        return self

    def on_stage(self, name: str, info: dict[str, Any]) -> None:
        if self.bar is None:
            return
        if not info:
            self.bar.console.print(f"[bold]{name}[/]: {_STAGE_TEXT[name]} ...")
            if name == "train":
                self.task = self.bar.add_task("train", total=self.total, info="")
        else:
            self.bar.console.print(f"  {name} done in {info['seconds']:.1f} s")

    def on_log(self, rec: dict[str, Any]) -> None:
        if self.bar is not None and self.task is not None:
            info = f"loss {rec['loss']:.4f}  lpl {rec['loss_lpl']:.4f}  gate {rec['gate_frac']:.0%}"
            self.bar.update(self.task, completed=rec["step"], info=info)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    st = s["stages"]
    table = Table(title=f"lplkit demo -> {s['config']['out']}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("result")
    tr, ev = st["train"], st["eval"]
    no_lpl, lpl = tr["s_per_step_no_lpl"], tr["s_per_step_lpl"]
    step_times = f"; s/step {no_lpl:.3f} without LPL, {lpl:.3f} with" if no_lpl and lpl else ""
    rows = [
        ("encode", f"{st['encode']['samples']} glyphs -> {s['store']}"),
        ("stats", f"latent std {', '.join(f'{v:.3f}' for v in st['stats']['latent_std'])}"),
        ("train", f"{tr['step']} steps (LPL from {tr['lpl_start']}){step_times}"),
        ("sample", f"{st['sample']['n']} images, {st['sample']['sampler']} {st['sample']['steps']} steps"),
        ("eval", f"{ev['n_samples']} samples vs {ev['n_ref']} store images"),
    ]  # fmt: skip
    for name, text in rows:
        table.add_row(name, f"{st[name]['seconds']:.1f}", text)
    table.caption = f"total {s['total_seconds']:.0f} s"
    output.console.print(table)
    metrics = Table(title="samples vs references")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for level, v in ev["swd"].items():
        metrics.add_row(f"SWD x1e3 {level}", f"{v:.2f}")
    metrics.add_row("SWD x1e3 avg", f"{ev['swd_avg']:.2f}")
    metrics.add_row("spectrum |dlog10 P| all", f"{ev['spectrum_distance']:.4f}")
    metrics.add_row("spectrum |dlog10 P| high half", f"{ev['spectrum_distance_high']:.4f}")
    output.console.print(metrics)
    output.console.print(
        f"sample grid: [bold]{s['grid']}[/]  (PNGs + samples.npz in {s['samples']})"
    )
