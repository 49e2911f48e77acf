"""`DemoConfig` / `lplkit demo` options of the two tasks: the class demo's resolved settings are
the ones it always had (written out here), `--task t2i` takes the t2i base's, and the
combinations that cannot work are refused in one line, exit 2, before anything is written."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from helpers.cli import run_cli

from lplkit.demo.config import DemoConfig
from lplkit.errors import ConfigError

#: The class demo's settings before `--task` existed (lplkit 0.1 DemoConfig defaults).
CLASS_DEFAULTS = {
    "out": "demo-out", "res": 64, "limit": None, "base": "openmoji-base", "model": "UNet-S",
    "objective": "flow", "steps": 60, "lpl_fraction": 1.0, "lpl_weight": 1.0, "batch_size": 32,
    "lr": 1e-4, "ema_decay": 0.99, "stats_samples": 256, "n_samples": 64, "sample_steps": 32,
    "guidance": 2.0, "eval_n": 256, "swd_dirs": 128, "seed": 0, "device": "cpu",
}  # fmt: skip


def test_class_defaults_are_unchanged() -> None:
    cfg = DemoConfig()
    got = asdict(cfg)
    assert {k: got[k] for k in CLASS_DEFAULTS} == CLASS_DEFAULTS
    assert got["task"] == "class" and got["prompts"] == []
    cfg.validate()
    assert str(cfg.store) == "demo-out/openmoji-64.zarr"
    assert str(cfg.run_dir("lpl")) == "demo-out/runs/lpl"


def test_t2i_takes_the_t2i_base_settings_and_its_own_folder() -> None:
    cfg = DemoConfig(task="t2i", out="o")
    cfg.validate()
    assert (cfg.res, cfg.base, cfg.model) == (32, "openmoji-t2i-base", "UNetText-S")
    assert str(cfg.store) == "o/t2i/openmoji-32.zarr"
    assert str(cfg.test_store) == "o/t2i/openmoji-32-test.zarr"
    assert str(cfg.run_dir("baseline")) == "o/t2i/runs/baseline"
    # explicit values win over the task's
    cfg = DemoConfig(task="t2i", res=48, base=None, model="UNetText-T")
    assert (cfg.res, cfg.base, cfg.model) == (48, None, "UNetText-T")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"task": "video"}, "--task must be one of class, t2i"),
        ({"task": "t2i", "base": "openmoji-base"}, "openmoji-base is the class demo's base"),
        ({"base": "openmoji-t2i-base"}, "openmoji-t2i-base is the t2i demo's base"),
        ({"task": "t2i", "res": 64}, "trained at 32 px; --res 64 needs --base none"),
        ({"res": 32}, "trained at 64 px; --res 32 needs --base none"),
        ({"prompts": ["a cat"]}, "--prompt applies to --task t2i"),
        ({"task": "t2i", "prompts": [" "]}, "--prompt must not be empty"),
    ],
)
def test_refusals(kw, match) -> None:
    with pytest.raises(ConfigError, match=match):
        DemoConfig(**kw).validate()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--task", "t2i", "--base", "openmoji-base"], "is the class demo's base"),
        (["--task", "t2i", "--base", "none", "--model", "UNet-S"], "needs a text-to-image --model"),
        (["--base", "none", "--model", "UNetText-S"], "needs a class-conditional --model"),
        (["--prompt", "cat face"], "--prompt applies to --task t2i"),
    ],
)
def test_cli_refuses_in_one_line_before_writing(tmp_path, capsys, args, match) -> None:
    out = tmp_path / "demo"
    code, stdout, err = run_cli(["demo", "--out", str(out), *args], capsys)
    assert code == 2, (stdout, err)
    lines = [x for x in err.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and match in lines[0], err
    assert not out.exists()


def test_cli_prompts_repeat() -> None:
    from lplkit.config import resolve_config
    from lplkit.demo.config import DEMO_FLAGS

    cfg = resolve_config(DemoConfig, DEMO_FLAGS, {"task": "t2i", "prompt": ["a b", "c d"]})
    assert cfg.prompts == ["a b", "c d"] and cfg.res == 32
