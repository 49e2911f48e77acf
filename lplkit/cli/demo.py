"""`lplkit demo`: the offline end-to-end run (encode -> stats -> train with LPL -> sample -> eval)."""

from __future__ import annotations

from typing import Any

import typer

from lplkit.cli import output
from lplkit.cli.options import command_extras, config_line, with_config_flags
from lplkit.cli.progress import LiveProgress
from lplkit.config import resolve_config
from lplkit.demo.config import DEMO_FLAGS, DemoConfig

_STAGE_TEXT = {
    "encode": "encoding OpenMoji (train + held-out test split) with the bundled tiny-openmoji AE",
    "stats": "latent + decoder-feature statistics",
    "train": "post-training the base twice: baseline, then with the LPL (same batches and noise)",
    "sample": "sampling both arms from the same noise",
    "eval": "evaluating both arms and the held-out floor against the store (SWD per level, spectrum)",
    "compare": "side-by-side picture: real | baseline | LPL",
}
_T2I_STAGE_TEXT = {
    **_STAGE_TEXT,
    "encode": "encoding OpenMoji at 32 px with the tiny-openmoji AE, names with openmoji-clip",
    "train": "post-training the t2i base twice: baseline, then with the LPL (same batches and noise)",
    "sample": "sampling both arms from the same noise: held-out names, then the picture's prompts",
    "adherence": "prompt adherence: nearest training glyph's name family vs the prompt's",
    "compare": "side-by-side picture: prompt | baseline | LPL",
}


def register(app: typer.Typer) -> None:
    """Add the `demo` command to the app."""

    @app.command("demo")
    @with_config_flags(DemoConfig, DEMO_FLAGS, command_extras())
    def demo_command(**params: Any) -> None:
        """The paper's protocol in miniature, offline on OpenMoji: post-train the bundled base
        without and with the LPL, sample both from the same noise, evaluate both against the
        held-out floor, and print where the picture is."""
        from lplkit.demo import run_demo
        from lplkit.demo.run import check_model_kind

        json_out = params.pop("json_out")
        cfg = resolve_config(
            DemoConfig, DEMO_FLAGS, params, config=params.pop("config"),
            overrides=params.pop("set_"),
        )  # fmt: skip
        check_model_kind(cfg)  # one line before the config line, as the config's own checks
        if not json_out:
            output.console.print(config_line("demo", cfg), soft_wrap=True, markup=False)
        texts = _T2I_STAGE_TEXT if cfg.task == "t2i" else _STAGE_TEXT
        with _Progress(cfg.steps, enabled=not json_out, texts=texts) as prog:
            summary = run_demo(cfg, on_stage=prog.on_stage, on_train_log=prog.on_log)
        if json_out:
            output.emit_json(summary)
        else:
            _print_summary(summary)


class _Progress:
    """One status line per stage, and a `LiveProgress` line per arm while it trains."""

    def __init__(self, total_steps: int, enabled: bool, texts: dict[str, str]) -> None:
        self.total = total_steps
        self.texts = texts
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
            output.console.print(f"[bold]{name}[/]: {self.texts[name]} ...")
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
    if "adherence" in st:
        ad = st["adherence"]["lpl"]
        rows.insert(-1, ("adherence", f"{ad['n']} samples of {ad['qualifying_prompts']} held-out "
                                      "names whose family exists in train"))  # fmt: skip
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
    if "adherence" in st:
        ad = Table(title="prompt adherence: nearest training glyph of the prompt's name family")
        for col in ("arm", "adherence (hits / samples)", "shuffled prompts (hits / pairs)"):
            ad.add_column(col, justify="right")
        for arm, name in (("baseline", "baseline"), ("lpl", "LPL")):
            a = st["adherence"][arm]
            if a["n"]:
                ad.add_row(name, f"{a['adherence']:.3f} ({a['hits']}/{a['n']})",
                           f"{a['chance']:.3f} ({a['chance_hits']}/{a['chance_pairs']})")  # fmt: skip
        output.console.print(ad)
    layout = "prompt | baseline | LPL" if "adherence" in st else "real | baseline | LPL"
    output.console.print(
        f"picture: [bold]{s['grid']}[/] ({layout}); "
        f"samples: {s['stages']['sample']['baseline']['out']}, {s['samples']}"
    )
