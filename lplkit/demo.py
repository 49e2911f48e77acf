"""The offline end-to-end demo: OpenMoji -> bundled AE -> stats -> DiT + LPL -> samples -> eval.

``run_demo(DemoConfig(out=DIR))`` chains the library calls that the CLI commands make:

1. ``encode``: OpenMoji glyphs rendered at ``res`` px, encoded by the bundled ``tiny-openmoji``
   autoencoder (f = 4, so 4 x 16 x 16 latents at 64 px) into ``DIR/openmoji-<res>.zarr``;
2. ``stats``: per-channel latent mean/std (the trainer normalizes ``z_n = (z - mean) / std``) and
   the decoder-feature statistics;
3. ``train``: a small DiT with the paper's protocol in miniature: the LPL term is switched on for
   the last ``lpl_fraction`` of the steps (``lpl.start_step = steps - round(lpl_fraction * steps)``),
   ``L = L_diff + w * (1/B) sum_{b in G} LPL(z0_hat_b, z0_b)`` with the SNR gate G;
4. ``sample``: ``n_samples`` images from the EMA weights (Heun for flow, DDIM for eps) and a grid;
5. ``eval``: SWD per Laplacian level and spectrum distance against the store's decoded latents.

Every stage resumes: the store and the run directory are re-used when they already hold the same
settings, so re-running the demo finishes an interrupted one. Nothing is downloaded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lplkit.errors import ConfigError

__all__ = ["DemoConfig", "run_demo", "train_config"]

#: ``on_stage(name, info)``: called when a stage starts (info = {}) and ends (info = its summary).
StageFn = Callable[[str, dict[str, Any]], None]


@dataclass
class DemoConfig:
    """Settings of one demo run; the defaults fit ~10 minutes on 2 CPU cores."""

    out: str
    res: int = 64
    limit: int | None = None  # encode only the first N glyphs (CI); None = the 1,674 train glyphs
    model: str = "DiT-T/2"
    objective: str = "flow"
    steps: int = 800
    lpl_fraction: float = 0.2  # the paper's post-training phase: the last 1/5 .. 1/3 of training
    batch_size: int = 32
    lr: float = 1e-3
    stats_samples: int = 256
    n_samples: int = 64
    sample_steps: int = 32
    eval_n: int = 256
    swd_dirs: int = 128
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        """Reject settings the stages would only fail on later."""
        for name in ("res", "steps", "batch_size", "n_samples", "sample_steps", "eval_n"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo: {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.lpl_fraction <= 1.0:
            raise ConfigError(f"demo: lpl_fraction must be in [0, 1], got {self.lpl_fraction}")
        if self.objective not in ("flow", "eps", "v"):
            raise ConfigError(f"demo: objective must be flow, eps or v, got {self.objective!r}")

    @property
    def lpl_start(self) -> int:
        """First step with the LPL term."""
        return self.steps - round(self.lpl_fraction * self.steps)

    @property
    def store(self) -> Path:
        """The latent store the demo writes."""
        return Path(self.out) / f"openmoji-{self.res}.zarr"

    @property
    def run_dir(self) -> Path:
        """The training run directory."""
        return Path(self.out) / "run"


def train_config(cfg: DemoConfig):
    """The demo's `TrainConfig` (the same recipe as pipelines/openmoji-lpl/flow.toml, LPL on late)."""
    from lplkit.config import from_dict
    from lplkit.train.config import TrainConfig

    data = {
        "store": str(cfg.store),
        "out": str(cfg.run_dir),
        "seed": cfg.seed,
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "ema_decay": 0.99,  # EMA horizon ~100 steps: short runs need a short one
        "device": cfg.device,
        "objective": {"kind": cfg.objective},
        "model": {"name": cfg.model},
        "optim": {"lr": cfg.lr, "warmup_steps": min(50, cfg.steps // 10)},
        "lpl": {"enabled": cfg.lpl_fraction > 0, "start_step": cfg.lpl_start, "snr_min": 3.0},
        "ckpt": {"every": cfg.steps, "keep_last": 1},
        "log": {"every": max(1, min(25, cfg.steps // 4)), "tensorboard": False},
    }
    return from_dict(TrainConfig, data)


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
    on_train_log: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or finish) the demo in ``cfg.out``; returns a JSON-serializable summary."""
    cfg.validate()
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict[str, Any]] = {}
    stages["encode"] = _timed("encode", on_stage, lambda: _encode(cfg))
    stages["stats"] = _timed("stats", on_stage, lambda: _stats(cfg))
    stages["train"] = _timed("train", on_stage, lambda: _train(cfg, on_train_log))
    stages["sample"] = _timed("sample", on_stage, lambda: _sample(cfg))
    stages["eval"] = _timed("eval", on_stage, lambda: _eval(cfg, stages["sample"]["npz"]))
    return {
        "config": asdict(cfg),
        "store": str(cfg.store),
        "run_dir": str(cfg.run_dir),
        "grid": stages["sample"]["grid"],
        "samples": stages["sample"]["out"],
        "stages": stages,
        "total_seconds": sum(s["seconds"] for s in stages.values()),
    }


def _encode(cfg: DemoConfig) -> dict[str, Any]:
    from lplkit.encode import EncodeConfig, encode_dataset

    ecfg = EncodeConfig(
        dataset="openmoji", out=str(cfg.store), res=cfg.res, limit=cfg.limit,
        workers=2, device=cfg.device,
    )  # fmt: skip
    s = encode_dataset(ecfg)
    return {"samples": s.total, "encoded": s.encoded, "skipped": s.skipped, "resumed": s.encoded == 0}  # fmt: skip


def _stats(cfg: DemoConfig) -> dict[str, Any]:
    from lplkit.stats_run import run_stats

    _, meta = run_stats(str(cfg.store), samples=cfg.stats_samples, seed=cfg.seed, device=cfg.device)
    lat = meta["latent"]
    return {"latent_mean": lat["mean"], "latent_std": lat["std"], "layers": len(meta["layers"])}


def _train(cfg: DemoConfig, on_log: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    from lplkit.train import train

    result = train(train_config(cfg), on_log=on_log)
    rows = _metrics(cfg.run_dir)
    pre = [r for r in rows if r["step"] <= cfg.lpl_start]
    post = [r for r in rows if r["step"] > cfg.lpl_start]
    return {
        "step": result.step,
        "lpl_start": cfg.lpl_start,
        "last_metrics": result.last_metrics,
        # seconds per optimizer step without / with the LPL term (log windows of this run)
        "s_per_step_no_lpl": _per_step(pre),
        "s_per_step_lpl": _per_step(post),
    }


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    import json

    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _per_step(rows: list[dict[str, Any]]) -> float | None:
    """Seconds per step over consecutive log windows (the first row's window length is unknown)."""
    if len(rows) < 2:
        return None
    steps = rows[-1]["step"] - rows[0]["step"]
    return sum(r["time_s"] for r in rows[1:]) / steps


def _sample(cfg: DemoConfig) -> dict[str, Any]:
    from lplkit.train.sampling import sample_run

    return sample_run(
        cfg.run_dir, out=Path(cfg.out) / "samples", n=cfg.n_samples, steps=cfg.sample_steps,
        seed=cfg.seed, device=cfg.device,
    )  # fmt: skip


def _eval(cfg: DemoConfig, npz: str) -> dict[str, Any]:
    from lplkit.evaluate import EvalOptions, evaluate
    from lplkit.metrics.swd import SWDConfig

    opts = EvalOptions(
        metrics=("swd", "spectrum"), n=cfg.eval_n, seed=cfg.seed, device=cfg.device,
        swd=SWDConfig(dirs_per_repeat=cfg.swd_dirs),
    )  # fmt: skip
    res = evaluate(npz, str(cfg.store), opts)
    spec = res["spectrum"]
    return {
        "n_samples": res["samples"]["n"],
        "n_ref": res["ref"]["n"],
        "swd": res["swd"]["levels"],
        "swd_avg": res["swd"]["avg"],
        "spectrum_distance": spec["distance"],
        "spectrum_distance_high": spec["distance_high"],
    }
