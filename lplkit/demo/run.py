"""The offline end-to-end demo: the paper's protocol in miniature on OpenMoji.

``run_demo(DemoConfig(out=DIR))`` chains the library calls that the CLI commands make:

1. ``encode``: OpenMoji glyphs rendered at ``res`` px, encoded by the bundled ``tiny-openmoji``
   autoencoder (f = 4: 4 x 16 x 16 latents at 64 px): the train split into
   ``DIR/openmoji-<res>.zarr`` and the held-out test split into ``DIR/openmoji-<res>-test.zarr``;
2. ``stats``: per-channel latent and decoder-feature statistics of the train store;
3. ``train``: post-training of the pre-trained base (``openmoji-base``, a U-Net that already makes
   emoji) in two arms that differ only by the LPL: the same seed, hence the same batches, timesteps,
   noise and label drops at every step. ``baseline`` trains ``L_diff``; ``lpl`` trains
   ``L_diff + w * (1/B) sum_{b in G} LPL(z0_hat_b, z0_b)`` with the SNR gate G (from step
   ``steps - round(lpl_fraction * steps)``);
4. ``sample``: ``n_samples`` images from each arm's EMA weights, from the same noise and labels;
5. ``eval``: SWD per Laplacian level and spectrum distance of each arm against the train store,
   next to the floor: held-out real glyphs (test split, decoded by the AE) against the same store;
6. ``compare``: one picture, real | baseline | LPL, and one table.

Every stage resumes: the stores and run directories are re-used when they already hold the same
settings, so re-running the demo finishes an interrupted one. Nothing is downloaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lplkit.config import from_dict
from lplkit.demo import t2i
from lplkit.demo.config import ARMS, T2I_TEXT_ENCODER, T2I_TEXT_ENCODERS, DemoConfig
from lplkit.diffusion.generate import sample_run
from lplkit.diffusion.image_files import make_grid
from lplkit.encode import EncodeConfig, encode_dataset
from lplkit.metrics.evaluate import EvalOptions, evaluate
from lplkit.metrics.image_sets import open_image_set
from lplkit.metrics.swd import SWDConfig
from lplkit.stats.job import run_stats
from lplkit.train import train
from lplkit.train.config import TrainConfig

__all__ = ["ARMS", "check_model_kind", "run_demo", "train_config"]

#: ``on_stage(name, info)``: called when a stage starts (info = {}) and ends (info = its summary).
StageFn = Callable[[str, dict[str, Any]], None]
#: ``on_train_log(arm, metrics row)``.
TrainLogFn = Callable[[str, dict[str, Any]], None]


def train_config(cfg: DemoConfig, arm: str):
    """The `TrainConfig` of one arm: the two differ only in ``lpl.enabled``."""

    data = {
        "store": str(cfg.store),
        "out": str(cfg.run_dir(arm)),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "ema_decay": cfg.ema_decay,
        "device": cfg.device,
        "init": cfg.base or None,
        "objective": {"kind": cfg.objective},
        "model": {"name": cfg.model, **_text_model(cfg)},
        "optim": {"lr": cfg.lr, "warmup_steps": min(10, cfg.steps // 10)},
        "lpl": {
            "enabled": arm == "lpl" and cfg.lpl_fraction > 0,
            "start_step": cfg.lpl_start,
            "weight": cfg.lpl_weight,
            "snr_min": 3.0,
        },
        "ckpt": {"every": cfg.steps, "keep_last": 1},
        "log": {"every": max(1, min(10, cfg.steps // 4)), "tensorboard": False},
    }
    return from_dict(TrainConfig, data)


def _text_model(cfg: DemoConfig) -> dict[str, Any]:
    """The t2i arms read the store's cached text encoder; class arms read labels."""
    return {"text_encoder": list(T2I_TEXT_ENCODERS)} if cfg.task == "t2i" else {}


def check_model_kind(cfg: DemoConfig) -> None:
    """--model must be of the task's kind (one line, before anything is written)."""
    from lplkit.diffusion.denoisers import is_text_model
    from lplkit.errors import ConfigError

    if (cfg.task == "t2i") != is_text_model(cfg.model):
        need = "a text-to-image" if cfg.task == "t2i" else "a class-conditional"
        raise ConfigError(
            f"demo: --task {cfg.task} needs {need} --model (e.g. "
            f"{'UNetText-S' if cfg.task == 't2i' else 'UNet-S'}), got {cfg.model}"
        )


def _timed(name: str, on_stage: StageFn | None, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if on_stage is not None:
        on_stage(name, {})
    t0 = time.perf_counter()
    info = fn()
    info["seconds"] = time.perf_counter() - t0
    if on_stage is not None:
        on_stage(name, info)
    return info


def run_demo(
    cfg: DemoConfig,
    *,
    on_stage: StageFn | None = None,
    on_train_log: TrainLogFn | None = None,
) -> dict[str, Any]:
    """Run (or finish) the demo in ``cfg.out``; returns a JSON-serializable summary."""
    cfg.validate()
    check_model_kind(cfg)
    if cfg.task == "t2i":
        return _run_t2i_demo(cfg, on_stage=on_stage, on_train_log=on_train_log)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    st: dict[str, dict[str, Any]] = {}
    st["encode"] = _timed("encode", on_stage, lambda: _encode(cfg))
    st["stats"] = _timed("stats", on_stage, lambda: _stats(cfg))
    st["train"] = _timed("train", on_stage, lambda: _train(cfg, on_train_log))
    st["sample"] = _timed("sample", on_stage, lambda: _sample(cfg))
    st["eval"] = _timed("eval", on_stage, lambda: _eval(cfg, st["sample"]))
    st["compare"] = _timed("compare", on_stage, lambda: _compare(cfg, st["sample"]))
    return {
        "config": asdict(cfg),
        "store": str(cfg.store),
        "test_store": str(cfg.test_store),
        "runs": {arm: str(cfg.run_dir(arm)) for arm in ARMS},
        "grid": st["compare"]["picture"],
        "samples": st["sample"]["lpl"]["out"],
        "stages": st,
        "total_seconds": sum(s["seconds"] for s in st.values()),
    }


def _run_t2i_demo(
    cfg: DemoConfig,
    *,
    on_stage: StageFn | None = None,
    on_train_log: TrainLogFn | None = None,
) -> dict[str, Any]:
    """Run (or finish) the t2i demo in ``cfg.out``/t2i; returns a JSON-serializable summary."""
    cfg.root.mkdir(parents=True, exist_ok=True)
    st: dict[str, dict[str, Any]] = {}
    st["encode"] = _timed("encode", on_stage, lambda: _encode(cfg))
    st["stats"] = _timed("stats", on_stage, lambda: _stats(cfg))
    st["train"] = _timed("train", on_stage, lambda: _train(cfg, on_train_log))
    st["sample"] = _timed("sample", on_stage, lambda: t2i.sample_stage(cfg))
    st["eval"] = _timed("eval", on_stage, lambda: _eval(cfg, st["sample"]))
    st["adherence"] = _timed("adherence", on_stage, lambda: t2i.adherence_stage(cfg, st["sample"]))
    st["compare"] = _timed("compare", on_stage, lambda: t2i.compare_stage(cfg, st["sample"]))
    return {
        "config": asdict(cfg),
        "task": "t2i",
        "store": str(cfg.store),
        "test_store": str(cfg.test_store),
        "runs": {arm: str(cfg.run_dir(arm)) for arm in ARMS},
        "grid": st["compare"]["picture"],
        "samples": st["sample"]["lpl"]["npz"],
        "prompts": st["sample"]["prompts"],
        "stages": st,
        "total_seconds": sum(s["seconds"] for s in st.values()),
    }


def _encode(cfg: DemoConfig) -> dict[str, Any]:

    out = {}
    for split, store in (("train", cfg.store), ("test", cfg.test_store)):
        text: dict[str, Any] = dict(T2I_TEXT_ENCODER) if cfg.task == "t2i" else {}
        ecfg = EncodeConfig(
            dataset="openmoji", out=str(store), res=int(cfg.res or 0), limit=cfg.limit, split=split,
            workers=2, device=cfg.device, **text,
        )  # fmt: skip
        s = encode_dataset(ecfg)
        out[split] = {"samples": s.total, "encoded": s.encoded, "skipped": s.skipped}
    return {
        "samples": out["train"]["samples"],
        "encoded": out["train"]["encoded"] + out["test"]["encoded"],
        "held_out": out["test"]["samples"],
        "splits": out,
    }


def _stats(cfg: DemoConfig) -> dict[str, Any]:

    _, meta = run_stats(str(cfg.store), samples=cfg.stats_samples, seed=cfg.seed, device=cfg.device)
    lat = meta["latent"]
    return {"latent_mean": lat["mean"], "latent_std": lat["std"], "layers": len(meta["layers"])}


def _train(cfg: DemoConfig, on_log: TrainLogFn | None) -> dict[str, Any]:

    out: dict[str, Any] = {"lpl_start": cfg.lpl_start, "base": cfg.base}
    for arm in ARMS:
        log = (lambda rec, a=arm: on_log(a, rec)) if on_log is not None else None
        result = train(train_config(cfg, arm), on_log=log)
        rows = _metrics(cfg.run_dir(arm))
        out[arm] = {
            "step": result.step,
            "last_metrics": result.last_metrics,
            "s_per_step": _per_step(rows),
        }
    out["step"] = out["lpl"]["step"]
    return out


def _metrics(run_dir: Path) -> list[dict[str, Any]]:

    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _per_step(rows: list[dict[str, Any]]) -> float | None:
    """Seconds per step over consecutive log windows (the first row's window length is unknown)."""
    if len(rows) < 2:
        return None
    steps = rows[-1]["step"] - rows[0]["step"]
    return sum(r["time_s"] for r in rows[1:]) / steps


def _sample(cfg: DemoConfig) -> dict[str, Any]:

    return {
        arm: sample_run(
            cfg.run_dir(arm),
            out=Path(cfg.out) / "samples" / arm,
            n=cfg.n_samples,
            steps=cfg.sample_steps,
            guidance=cfg.guidance,
            seed=cfg.seed,
            sampler="euler" if cfg.objective == "flow" else None,
            device=cfg.device,
        )
        for arm in ARMS
    }


def _eval(cfg: DemoConfig, samples: dict[str, Any]) -> dict[str, Any]:
    opts = EvalOptions(
        metrics=("swd", "spectrum"), n=cfg.eval_n, seed=cfg.seed, device=cfg.device,
        swd=SWDConfig(dirs_per_repeat=cfg.swd_dirs),
    )  # fmt: skip
    out: dict[str, Any] = {}
    for arm in ARMS:
        res = evaluate(samples[arm]["npz"], str(cfg.store), opts, floor=str(cfg.test_store))
        out[arm] = _eval_row(res)
        out["floor"] = _eval_row(res["floor"])
        out["n_ref"] = res["ref"]["n"]
    return out


def _eval_row(res: dict[str, Any]) -> dict[str, Any]:
    return {
        "n": res["n"] if "n" in res else res["samples"]["n"],
        "swd": res["swd"]["levels"],
        "swd_avg": res["swd"]["avg"],
        "spectrum_distance": res["spectrum"]["distance"],
        "spectrum_distance_high": res["spectrum"]["distance_high"],
    }


def _compare(cfg: DemoConfig, samples: dict[str, Any]) -> dict[str, Any]:
    """real | baseline | LPL as one PNG: held-out glyphs decoded by the AE, then both arms."""
    import numpy as np

    real = open_image_set(str(cfg.test_store), device=cfg.device)
    n = min(cfg.n_samples, len(real))
    panels = {"real (held-out, AE)": make_grid(real.read(np.arange(n)))}
    for arm in ARMS:
        arr = np.load(samples[arm]["npz"])["arr_0"][:n]
        panels["baseline" if arm == "baseline" else "LPL"] = make_grid(arr)
    path = Path(cfg.out) / "compare.png"
    _side_by_side(panels, path)
    return {"picture": str(path), "n": n}


def _side_by_side(panels: dict[str, Any], path: Path) -> None:
    """Grids next to each other with a title above each (PIL's built-in font)."""
    from PIL import Image, ImageDraw

    grids = [Image.fromarray(g) for g in panels.values()]
    gap, title_h = 12, 18
    width = sum(g.width for g in grids) + gap * (len(grids) + 1)
    height = max(g.height for g in grids) + title_h + 2 * gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = gap
    for title, grid in zip(panels, grids, strict=True):
        draw.text((x, gap // 2), title, fill="black")
        canvas.paste(grid, (x, gap // 2 + title_h))
        x += grid.width + gap
    tmp = path.with_suffix(".tmp.png")
    canvas.save(tmp)
    tmp.replace(path)
