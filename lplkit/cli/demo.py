"""`lplkit demo`: the offline end-to-end run (encode -> stats -> train with LPL -> sample -> eval)."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import ranged_option
from lplkit.cli.progress import LiveProgress
from lplkit.config import OPTION_RANGES

_STAGE_TEXT = {
    "encode": "encoding OpenMoji (train + held-out test split) with the bundled tiny-openmoji AE",
    "stats": "latent + decoder-feature statistics",
    "train": "post-training the base twice: baseline, then with the LPL (same batches and noise)",
    "sample": "sampling both arms from the same noise",
    "eval": "evaluating both arms and the held-out floor against the store (SWD per level, spectrum)",
    "compare": "side-by-side picture: real | baseline | LPL",
}

_RANGES = OPTION_RANGES["demo"]


def register(app: typer.Typer) -> None:
    """Add the `demo` command to the app."""

    @app.command("demo")
    def demo_command(
        out: str = typer.Option("demo-out", "--out", help="Output directory (re-run = resume)."),
        res: int = ranged_option(64, "--res", rng=_RANGES["res"], help="Image resolution."),
        limit: int | None = ranged_option(
            None,
            "--limit",
            rng=_RANGES["limit"],
            help="Encode only the first N glyphs of each split (a quick check).",
        ),
        base: str = typer.Option(
            "openmoji-base",
            "--base",
            help="Pre-trained denoiser both arms start from: a bundled base, a run directory, "
            "or none (from scratch).",
        ),
        model: str = typer.Option(
            "UNet-S",
            "--model",
            help="Denoiser (see lplkit.diffusion.denoisers); must match --base.",
        ),
        objective: str = typer.Option("flow", "--objective", help="flow, eps or v."),
        steps: int = ranged_option(
            60, "--steps", rng=_RANGES["steps"], help="Post-training steps of each arm."
        ),
        lpl_fraction: float = ranged_option(
            1.0,
            "--lpl-fraction",
            rng=_RANGES["lpl_fraction"],
            help="LPL arm: last fraction of its steps trained with the LPL.",
        ),
        lpl_weight: float = ranged_option(
            1.0, "--lpl-weight", rng=_RANGES["lpl_weight"], help="w in L + w LPL."
        ),
        batch_size: int = ranged_option(
            32, "--batch-size", rng=_RANGES["batch_size"], help="Training batch."
        ),
        lr: float = ranged_option(
            1e-4, "--lr", rng=_RANGES["lr"], help="Post-training learning rate."
        ),
        n_samples: int = ranged_option(
            64, "--n", rng=_RANGES["n_samples"], help="Images to sample per arm (grid + eval)."
        ),
        sample_steps: int = ranged_option(
            32, "--sample-steps", rng=_RANGES["sample_steps"], help="Sampler steps."
        ),
        guidance: float = ranged_option(
            2.0,
            "--cfg",
            "--guidance",
            rng=_RANGES["guidance"],
            help="Classifier-free guidance scale.",
        ),
        eval_n: int = ranged_option(
            256, "--eval-n", rng=_RANGES["eval_n"], help="Reference images for eval."
        ),
        swd_dirs: int = ranged_option(
            128, "--swd-dirs", rng=_RANGES["swd_dirs"], help="SWD directions per repeat."
        ),
        stats_samples: int = ranged_option(
            256, "--stats-samples", rng=_RANGES["stats_samples"], help="Items for `stats`."
        ),
        seed: int = ranged_option(0, "--seed", rng=_RANGES["seed"], help="Seed of every stage."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda ..."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    ) -> None:
        """The paper's protocol in miniature, offline on OpenMoji: post-train the bundled base
        without and with the LPL, sample both from the same noise, evaluate both against the
        held-out floor, and print where the picture is."""
        from lplkit.demo import DemoConfig, run_demo

        cfg = DemoConfig(
            out=out, res=res, limit=limit, base=None if base.lower() == "none" else base,
            model=model, objective=objective, steps=steps, lpl_fraction=lpl_fraction,
            lpl_weight=lpl_weight, batch_size=batch_size, lr=lr, n_samples=n_samples,
            sample_steps=sample_steps, guidance=guidance, eval_n=eval_n, swd_dirs=swd_dirs,
            stats_samples=stats_samples, seed=seed, device=device,
        )  # fmt: skip
        with _Progress(cfg.steps, enabled=not json_out) as prog:
            summary = run_demo(cfg, on_stage=prog.on_stage, on_train_log=prog.on_log)
        if json_out:
            output.emit_json(summary)
        else:
            _print_summary(summary)


class _Progress:
    """One status line per stage, and a `LiveProgress` line per arm while it trains."""

    def __init__(self, total_steps: int, enabled: bool) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.arm: str | None = None
        self.bar: LiveProgress | None = None

    def __enter__(self) -> _Progress:
        return self

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar, self.arm = None, None

    def on_stage(self, name: str, info: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._close_bar()
        if not info:
            output.console.print(f"[bold]{name}[/]: {_STAGE_TEXT[name]} ...")
        else:
            output.console.print(f"  {name} done in {info['seconds']:.1f} s")

    def on_log(self, arm: str, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if arm != self.arm:
            self._close_bar()
            self.bar = LiveProgress(f"train {arm}", total=self.total, log_every=10.0,
                                    log_unit="steps").__enter__()  # fmt: skip
            self.arm = arm
        info = f"loss {rec['loss']:.4f}  lpl {rec['loss_lpl']:.4f}  gate {rec['gate_frac']:.0%}"
        assert self.bar is not None
        self.bar.update(rec["step"], info=info)

    def __exit__(self, *exc: object) -> None:
        self._close_bar()


def _print_summary(s: dict[str, Any]) -> None:
    from rich.table import Table

    st = s["stages"]
    table = Table(title=f"lplkit demo -> {s['config']['out']}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("result")
    tr = st["train"]
    times = ", ".join(
        f"{arm} {tr[arm]['s_per_step']:.2f} s/step" for arm in ("baseline", "lpl")
        if tr[arm]["s_per_step"]
    )  # fmt: skip
    base = s["config"]["base"] or "random init"
    rows = [
        ("encode", f"{st['encode']['samples']} train + {st['encode']['held_out']} held-out glyphs"),
        ("stats", f"latent std {', '.join(f'{v:.3f}' for v in st['stats']['latent_std'])}"),
        ("train", f"2 x {tr['step']} steps from {base} (LPL from step {tr['lpl_start']}); {times}"),
        ("sample", f"{st['sample']['lpl']['n']} images per arm, {st['sample']['lpl']['sampler']} "
                   f"{st['sample']['lpl']['steps']} steps, CFG {st['sample']['lpl']['cfg']}"),
        ("eval", f"vs {st['eval']['n_ref']} train-store images; floor: held-out glyphs"),
        ("compare", s["grid"]),
    ]  # fmt: skip
    for name, text in rows:
        table.add_row(name, f"{st[name]['seconds']:.1f}", text)
    table.caption = f"total {s['total_seconds']:.0f} s"
    output.console.print(table)
    ev = st["eval"]
    metrics = Table(title=f"samples vs references (n = {ev['lpl']['n']} per set; lower is better)")
    metrics.add_column("metric")
    for col in ("floor (real)", "baseline", "LPL", "LPL - baseline"):
        metrics.add_column(col, justify="right")
    for level in ev["floor"]["swd"]:
        f, b, lp = (ev[k]["swd"][level] for k in ("floor", "baseline", "lpl"))
        metrics.add_row(f"SWD x1e3 {level}", f"{f:.2f}", f"{b:.2f}", f"{lp:.2f}", f"{lp - b:+.2f}")
    for key, name in (("spectrum_distance", "all"), ("spectrum_distance_high", "high half")):
        f, b, lp = (ev[k][key] for k in ("floor", "baseline", "lpl"))
        metrics.add_row(f"spectrum |dlog10 P| {name}", f"{f:.4f}", f"{b:.4f}", f"{lp:.4f}",
                        f"{lp - b:+.4f}")  # fmt: skip
    output.console.print(metrics)
    output.console.print(
        f"picture: [bold]{s['grid']}[/] (real | baseline | LPL); "
        f"samples: {s['stages']['sample']['baseline']['out']}, {s['samples']}"
    )
