"""`lplkit train` config resolution: defaults <- saved run <- --config <- --set <- flags."""

from __future__ import annotations

import json

import pytest

from lplkit.errors import ConfigError
from lplkit.train.config import TrainConfig
from lplkit.train.run_dir import check_resume_config
from lplkit.train.run_dir import resolve_train_config as resolve_config


def test_precedence_file_set_flags(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("steps = 50\nbatch_size = 4\n[optim]\nlr = 0.5\n[lpl]\nweight = 2.0\n")
    cfg = resolve_config(
        str(recipe), ["optim.lr=0.25", "lpl.weight=3"], {"lr": 0.125, "out": None, "steps": None}
    )
    assert cfg.steps == 50 and cfg.batch_size == 4  # from the file
    assert cfg.lpl.weight == 3.0  # --set beats the file
    assert cfg.optim.lr == 0.125  # a flag beats --set
    assert TrainConfig().optim.lr == 1e-4  # defaults untouched


def test_max_timestep_alone_replaces_the_snr_gate(tmp_path):
    """One gate whichever way the key is written: flag, TOML and --set resolve alike (the rule
    lived in the flag layer, so TOML/--set kept `snr >= 3 AND t < 200`)."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('[objective]\nkind = "eps"\n[lpl]\nmax_timestep = 200\n')
    ways = {
        "flag": resolve_config(None, [], {"objective": "eps", "lpl_max_timestep": 200}),
        "toml": resolve_config(str(recipe), [], {}),
        "set": resolve_config(None, ["objective.kind=eps", "lpl.max_timestep=200"], {}),
    }
    for way, cfg in ways.items():
        assert (cfg.lpl.snr_min, cfg.lpl.max_timestep) == (None, 200), way
    both = resolve_config(
        None, [], {"objective": "eps", "lpl_max_timestep": 200, "lpl_snr_min": 2.0}
    )
    assert both.lpl.snr_min == 2.0
    explicit = resolve_config(
        None, ["objective.kind=eps", "lpl.max_timestep=200", "lpl.snr_min=3"], {}
    )
    assert (explicit.lpl.snr_min, explicit.lpl.max_timestep) == (3.0, 200)
    assert resolve_config(None, [], {}).lpl.snr_min == 3.0  # no max timestep: the default gate


def test_saved_run_config_is_the_base_when_resuming(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = resolve_config(None, [], {"out": str(run), "model": "DiT-T/2", "lr": 0.003})
    from lplkit.config import to_dict

    (run / "config.json").write_text(json.dumps(to_dict(saved)))
    again = resolve_config(None, [], {"out": str(run), "steps": 99})
    assert again.model.name == "DiT-T/2" and again.optim.lr == 0.003 and again.steps == 99
    assert check_resume_config(run, again)  # only the run length changed: allowed
    changed = resolve_config(None, [], {"out": str(run), "lr": 0.1})
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        check_resume_config(run, changed)


def test_bad_values_are_errors():
    with pytest.raises(ConfigError):
        resolve_config(None, ["optim.lr=fast"], {})
    with pytest.raises(ConfigError):
        resolve_config(None, ["objective.kind=ddim"], {})
    with pytest.raises(ConfigError, match="unknown config key"):
        resolve_config(None, ["optim.learning_rate=1"], {})
