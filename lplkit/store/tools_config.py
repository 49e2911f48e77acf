"""`InfoConfig`, `VerifyConfig`, `UpgradeConfig`: the settings of the store tools `lplkit info`,
`verify` and `upgrade`, and their flags (`*_FLAGS`); torch-free (`--help` is built from them)."""

from __future__ import annotations

from dataclasses import dataclass

from lplkit.config import ConfigFlag, ranged
from lplkit.store import format as fmt

__all__ = [
    "INFO_FLAGS",
    "UPGRADE_FLAGS",
    "VERIFY_FLAGS",
    "InfoConfig",
    "UpgradeConfig",
    "VerifyConfig",
]

STORE_ARGUMENT = ConfigFlag("store", "STORE", "Latent store URL or path.")


@dataclass
class InfoConfig:
    """What `lplkit info` shows: one store."""

    store: str


@dataclass
class VerifyConfig:
    """What `lplkit verify` checks (`lplkit.store.verify.verify_store` takes these as arguments)."""

    store: str
    repair: bool = False
    no_checksums: bool = False
    workers: int = ranged(1, ge=1, le=256)  # threads; the report is the same as serial
    sample: float | None = ranged(None, gt=0.0, le=1.0)  # fraction of shards whose data is read
    seed: int = ranged(0, ge=0)  # of the sample's draw


@dataclass
class UpgradeConfig:
    """What `lplkit upgrade` rewrites (`lplkit.store.upgrade.upgrade_store`)."""

    store: str
    shard_mb: float | None = ranged(None, gt=0.0, le=fmt.MAX_SHARD_MB)  # None: the default 128


INFO_FLAGS: tuple[ConfigFlag, ...] = (STORE_ARGUMENT,)

VERIFY_FLAGS: tuple[ConfigFlag, ...] = (
    STORE_ARGUMENT,
    ConfigFlag("repair", "--repair",
               "Remove bad shards' completion markers so re-running encode re-encodes them."),
    ConfigFlag("no_checksums", "--no-checksums",
               "Skip sha256 checks (faster; NaN/count checks still run)."),
    ConfigFlag("workers", "--workers",
               "Shards checked in parallel (threads); the report is the same as with 1."),
    ConfigFlag("sample", "--sample",
               "Read the data of only this FRACTION of the shards (seeded random draw, named in "
               "the report); damage in a shard outside the sample is not found."),
    ConfigFlag("seed", "--seed", "Seed of --sample's draw."),
)  # fmt: skip

UPGRADE_FLAGS: tuple[ConfigFlag, ...] = (
    STORE_ARGUMENT,
    ConfigFlag("shard_mb", "--shard-mb",
               "MiB per shard of the rewritten arrays (default 128); given, a layout-3 store is "
               "resharded too."),
)  # fmt: skip
