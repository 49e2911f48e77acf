"""lplkit.config: TOML + dotted overrides into typed dataclasses, with errors naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lplkit.config import from_dict, load_config, parse_overrides, to_dict
from lplkit.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.999)


@dataclass
class Outer:
    steps: int = 10
    name: str = "x"
    objective: Literal["eps", "v", "flow"] = "eps"
    bf16: bool = False
    snr_min: float | None = None
    opt: Inner = field(default_factory=Inner)


def test_defaults_file_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('steps = 20\nobjective = "v"\n[opt]\nlr = 0.5\n')
    cfg = load_config(Outer, p, ["opt.lr=0.25", "bf16=true", "snr_min=3", "opt.betas=0.8,0.9"])
    assert cfg == Outer(
        steps=20, objective="v", bf16=True, snr_min=3.0, opt=Inner(0.25, (0.8, 0.9))
    )
    assert to_dict(cfg)["opt"]["lr"] == 0.25


@pytest.mark.parametrize(
    "override, needle",
    [
        ("stepz=3", "stepz"),
        ("steps=1.5", "steps"),
        ("objective=x0", "objective"),
        ("bf16=maybe", "bf16"),
        ("opt.lrr=1", "opt.lrr"),
        ("noequals", "key=value"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(Outer, None, [override])


def test_missing_and_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Outer, bad)


def test_optional_none():
    assert load_config(Outer, None, ["snr_min=none"]).snr_min is None


def test_parse_overrides_nesting():
    assert parse_overrides(["a.b.c=1", "a.d=x=y"]) == {"a": {"b": {"c": "1"}, "d": "x=y"}}


@settings(deadline=None)  # a loaded 2-core CI box can stall one example past hypothesis' 200 ms
@given(
    st.dictionaries(
        st.sampled_from(["steps", "name", "objective", "bf16", "snr_min", "opt", "junk"]),
        st.one_of(st.integers(), st.floats(), st.text(max_size=5), st.booleans(), st.none()),
        max_size=5,
    )
)
def test_fuzz_from_dict_only_raises_config_error(data):
    """Arbitrary (possibly ill-typed) config tables either parse or raise ConfigError, nothing else."""
    try:
        cfg = from_dict(Outer, data)
    except ConfigError:
        return
    assert isinstance(cfg.steps, int) and isinstance(cfg.bf16, bool)
