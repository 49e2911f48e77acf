"""`lplkit train --init`: a run starts from another run's EMA weights and keeps its normalization."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lplkit.config import from_dict
from lplkit.errors import ConfigError
from lplkit.store.synthetic import write_synthetic_store
from lplkit.train.base import load_base
from lplkit.train.builders import build_components
from lplkit.train.config import TrainConfig
from lplkit.train.run import train


def _cfg(store, out, **kw) -> TrainConfig:
    data = {
        "store": str(store), "out": str(out), "steps": 4, "batch_size": 4, "seed": 1,
        "model": {"name": "UNet-T"}, "objective": {"kind": "flow"},
        "ckpt": {"every": 4, "keep_last": 1}, "log": {"every": 2, "tensorboard": False},
        "device": "cpu", **kw,
    }  # fmt: skip
    return from_dict(TrainConfig, data)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    store = root / "s.zarr"
    write_synthetic_store(store, count=16, latent_shape=(4, 8, 8), num_classes=3, seed=0)
    train(_cfg(store, root / "base"))
    return store, root / "base"


def test_init_loads_the_base_ema_weights_and_normalization(base_run, tmp_path):
    store, base = base_run
    ckpt = sorted((base / "checkpoints").iterdir())[-1]
    ema = load_file(str(ckpt / "ema.safetensors"))  # oracle: the checkpoint file itself
    parts = build_components(
        _cfg(store, tmp_path / "post", init=str(base), seed=7), torch.device("cpu")
    )
    got = parts.model.state_dict()
    assert set(got) == set(ema)
    for k, v in ema.items():
        torch.testing.assert_close(got[k], v.float(), rtol=0, atol=0)
    base_norm = json.loads((base / "run.json").read_text())["normalization"]
    assert list(parts.normalizer.shift) == base_norm["shift"]
    assert list(parts.normalizer.scale) == base_norm["scale"]


def test_init_run_records_its_base(base_run, tmp_path):
    store, base = base_run
    train(_cfg(store, tmp_path / "post", init=str(base), steps=2))
    info = json.loads((tmp_path / "post" / "run.json").read_text())
    assert info["init"]["spec"] == str(base)
    assert info["init"]["step"] == 4


def test_init_refuses_another_architecture(base_run, tmp_path):
    store, base = base_run
    cfg = _cfg(store, tmp_path / "post", init=str(base), model={"name": "DiT-T/2"})
    with pytest.raises(ConfigError, match="model UNet-T"):
        build_components(cfg, torch.device("cpu"))


def test_load_base_of_a_missing_directory_is_one_line():
    with pytest.raises(ConfigError, match="neither a bundled base"):
        load_base("/nonexistent/run")
