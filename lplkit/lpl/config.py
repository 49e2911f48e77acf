"""The LPL's typed options and its presets (`paper`, `paper-dataset`, `diffusers-reference`).

Every option is documented against the paper and the public reference code in docs/lpl.md.
`resolve_lpl_config(preset, **overrides)` returns a validated `LPLConfig`; a bad value raises
`ConfigError` naming the option and the allowed values.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from lplkit.config import check_ranges, coerce, ranged
from lplkit.errors import ConfigError

__all__ = ["LPL_PRESETS", "LPLConfig", "lpl_options", "parse_outliers", "resolve_lpl_config"]

Norm = Literal["l2", "l2-shared", "standardize-shared", "dataset", "none"]
NORMS: tuple[str, ...] = ("l2", "l2-shared", "standardize-shared", "dataset", "none")
LAYER_WEIGHTS: tuple[str, ...] = ("uniform", "pow2", "upsampling")
DISTANCES: tuple[str, ...] = ("mse", "l1")
STATS_SOURCES: tuple[str, ...] = ("pred", "target")
OUTLIER_SOURCES: tuple[str, ...] = ("sample", "dataset")
CROP_MODES: tuple[str, ...] = ("random", "grid")

#: `outliers` value: False (off), True (the reference code's layers and kernel sizes), a sequence
#: of layer indices (kernel sizes scaled by each layer's resolution), or {layer index: down_f}.
Outliers = bool | Sequence[int] | Mapping[int, int]


@dataclass(frozen=True)
class LPLConfig:
    """Options of `LatentPerceptualLoss` (see docs/lpl.md for each one against the paper).

    Attributes:
        depth: up stages tapped after the first (mid) one; None = all of them (4 on SD/SDXL/FLUX).
        norm: per-layer feature normalization, one of `NORMS`.
        standardize_stats: for `standardize-shared`, whose per-channel statistics both use:
            `pred` (the paper as described) or `target`.
        outliers: which layers get the target-feature outlier mask (see `Outliers`).
        outlier_source: `sample` (per-sample quantiles/std) or `dataset` (cached `FeatureStats`).
        outlier_quantile: q of the q / (1-q) quantiles (0.02 = 2% and 98%).
        outlier_std_mult: m = outlier_std_mult * std widens the inlier interval.
        layer_weights: `uniform`, `pow2` (2^-min(i,3)) or `upsampling` (1 / upsample factor).
        distance: `mse` (squared difference) or `l1` (absolute difference).
        apply_post_quant_conv: run the AE's post_quant_conv before the decoder (True = correct).
        grad_checkpointing: recompute each decoder stage in backward.
        eps: stabilizer of every normalization denominator.
        crop: decode only a crop x crop window of each latent (`lplkit.lpl.crops`); None = the
            whole latent. Changes the loss (a window's features, not the whole image's).
        crop_mode: `random` (any position) or `grid` (one of the non-overlapping tiles).
        compile: run the decoder taps and the loss math through `torch.compile` (same values
            within float tolerance; one graph for every gated-batch size >= 2).
        channels_last: run the decoder in the channels-last memory format.
    """

    depth: int | None = ranged(None, ge=0, le=64)
    norm: str = "standardize-shared"
    standardize_stats: str = "pred"
    outliers: Outliers = True
    outlier_source: str = "sample"
    outlier_quantile: float = ranged(0.02, gt=0.0, lt=0.5)
    outlier_std_mult: float = ranged(2.0, ge=0.0)
    layer_weights: str = "upsampling"
    distance: str = "mse"
    apply_post_quant_conv: bool = True
    grad_checkpointing: bool = False
    eps: float = ranged(1e-6, gt=0.0)
    crop: int | None = ranged(None, ge=1, le=65536)
    crop_mode: str = "random"
    compile: bool = False
    channels_last: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for logs and run configs)."""
        d = asdict(self)
        o = self.outliers
        d["outliers"] = (
            o if isinstance(o, bool) else (dict(o) if isinstance(o, Mapping) else list(o))
        )
        return d


LPL_PRESETS: dict[str, LPLConfig] = {
    # lplkit's default, option by option against the paper's description (docs/lpl.md).
    "paper": LPLConfig(),
    # `paper` with the per-layer normalization and the outlier quantiles taken from the dataset's
    # decoder-feature statistics cached by `lplkit stats` (docs/lpl.md, "paper-dataset").
    "paper-dataset": LPLConfig(norm="dataset", outlier_source="dataset"),
    # huggingface/diffusers examples/research_projects/lpl README "recommended" recipe:
    # --lpl_norm_type shared --lpl_pow_law --lpl_num_blocks 4 --lpl_remove_outliers, mse,
    # grad checkpointing on, and its omission of post_quant_conv.
    "diffusers-reference": LPLConfig(
        depth=None,
        norm="l2-shared",
        outliers=True,
        layer_weights="pow2",
        distance="mse",
        apply_post_quant_conv=False,
        grad_checkpointing=True,
    ),
}


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"LPL option {name}={value!r} is not one of {', '.join(allowed)}")


def _check_outliers(value: object) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, Mapping):
        ok = all(
            isinstance(k, int) and k >= 0 and isinstance(v, int) and v >= 1
            for k, v in value.items()
        )
    elif isinstance(value, Sequence) and not isinstance(value, str):
        ok = all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in value)
    else:
        ok = False
    if not ok:
        raise ConfigError(
            f"LPL option outliers={value!r} must be a bool, a list of layer indices "
            "or a {layer index: down factor >= 1} mapping"
        )


def validate(cfg: LPLConfig) -> LPLConfig:
    """Return `cfg` or raise ConfigError for the first invalid option."""
    if cfg.depth is not None and (not isinstance(cfg.depth, int) or isinstance(cfg.depth, bool)):
        raise ConfigError(f"LPL option depth={cfg.depth!r} must be None or an int >= 0")
    _choice("norm", cfg.norm, NORMS)
    _choice("standardize_stats", cfg.standardize_stats, STATS_SOURCES)
    _choice("outlier_source", cfg.outlier_source, OUTLIER_SOURCES)
    _choice("layer_weights", cfg.layer_weights, LAYER_WEIGHTS)
    _choice("distance", cfg.distance, DISTANCES)
    _choice("crop_mode", cfg.crop_mode, CROP_MODES)
    _check_outliers(cfg.outliers)
    if cfg.crop is not None and (isinstance(cfg.crop, bool) or not isinstance(cfg.crop, int)):
        raise ConfigError(f"LPL option crop={cfg.crop!r} must be None or an int >= 1")
    check_ranges(cfg, "lpl.loss.")  # depth, crop, outlier_quantile, outlier_std_mult, eps
    return cfg


def _exact_int(x: object) -> int:
    """An int, or a string of one; never a float (2.5 must not become layer 2) or a bool."""
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    if isinstance(x, str):
        return int(x)
    raise ValueError(f"{x!r} is not an integer")


def parse_outliers(value: object, key: str = "outliers") -> Outliers:
    """An `outliers` value from TOML, JSON or a CLI string.

    `true`/`false`; a list of layer indices (`[2, 3]`, `"2,3"`); a {layer: down factor} table
    (`{2 = 2, 3 = 1}` in TOML, JSON's string keys, or `"2:2,3:1"`).
    """
    if isinstance(value, bool):
        return value
    try:
        if isinstance(value, str):
            text = value.strip().lower()
            if text in ("true", "1", "yes", "on", "false", "0", "no", "off"):
                return text in ("true", "1", "yes", "on")
            if text in ("", "none", "[]"):
                return ()
            items = [x.strip() for x in text.strip("[]").split(",") if x.strip()]
            if all(":" in x for x in items):
                return {int(k): int(v) for k, v in (x.split(":", 1) for x in items)}
            return tuple(int(x) for x in items)
        if isinstance(value, Mapping):  # JSON keys are strings; TOML values must be integers
            return {_exact_int(k): _exact_int(v) for k, v in value.items()}
        if isinstance(value, Sequence):
            return tuple(_exact_int(x) for x in value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(
        f"{key}: {value!r} is not true/false, a list of layer indices (2,3) "
        "or a layer:down_factor list (2:2,3:1)"
    )


def lpl_options(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Typed `LPLConfig` keyword options from a TOML/JSON/`--set` table (unknown key: ConfigError)."""

    if not isinstance(table, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'lpl.loss'}: expected a table, got {table!r}")
    hints = typing.get_type_hints(LPLConfig)
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise ConfigError(
            f"unknown LPL option(s) {', '.join(prefix + k for k in unknown)}; "
            f"known: {', '.join(f.name for f in fields(LPLConfig))}"
        )
    return {
        k: parse_outliers(v, prefix + k) if k == "outliers" else coerce(v, hints[k], prefix + k)
        for k, v in table.items()
    }


def resolve_lpl_config(preset: str = "paper", **overrides: Any) -> LPLConfig:
    """The preset's options with keyword `overrides` applied, validated.

    Raises:
        ConfigError: unknown preset, unknown option name or invalid value.
    """
    if preset not in LPL_PRESETS:
        raise ConfigError(f"unknown LPL preset {preset!r}; choose one of {', '.join(LPL_PRESETS)}")
    known = {f.name for f in fields(LPLConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown LPL option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return validate(replace(LPL_PRESETS[preset], **overrides))
