"""Training: typed config, the loop, EMA, atomic checkpoints, metrics, torch.distributed.

Public API::

    from lplkit.train import TrainConfig, train
    result = train(TrainConfig(store="data.zarr", out="runs/a", steps=1000))  # re-run = resume

Submodules: `config` (TrainConfig), `builders` (config -> Components), `loop` (Trainer,
Components), `losses` (objective + gated LPL), `checkpoint`, `ema`, `rng`, `loader`, `metrics_log`
(metrics.jsonl, TensorBoard, W&B), `lr_schedule`, `normalization`, `previews` (the periodic sample
grid), `base` (pre-trained bases: `load_base`, the weights behind `--init`), `pipeline_init`
(`--init` from a diffusers DiTPipeline), `run_dir` (config.json,
run.json, the run lock), `run` (`train()`).
Sampling a finished run is `lplkit.diffusion.generate.sample_run`.
Importing this package does not import torch (the CLI's `--help` relies on it).
"""

from __future__ import annotations

from typing import Any

from lplkit.train.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def train(cfg: TrainConfig, **callbacks: Any) -> Any:
    """Train or resume the run `cfg.out` (see `lplkit.train.run.train`)."""
    from lplkit.train.run import train as _train

    return _train(cfg, **callbacks)
