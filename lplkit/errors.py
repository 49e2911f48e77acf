"""One error hierarchy. Each error also subclasses the matching builtin so callers can catch either.

The CLI turns an `LplkitError` into a one-line message and `exit_code` (traceback only with --debug).
"""

from __future__ import annotations


class LplkitError(Exception):
    """Base of every error lplkit raises on purpose."""

    exit_code: int = 1


class ConfigError(LplkitError, ValueError):
    """A bad flag, config file or option value."""

    exit_code = 2


class SourceError(LplkitError, ValueError):
    """A dataset source that cannot be resolved or read."""

    exit_code = 3


class BadImageError(SourceError):
    """One image that cannot be decoded or is unusable (raised only in --strict mode)."""


class StoreError(LplkitError, OSError):
    """A latent store that cannot be created, opened or written."""

    exit_code = 4


class StoreNotFoundError(StoreError, FileNotFoundError):
    """A store path where nothing exists (a mistyped --store), as opposed to a damaged store."""


class StoreMismatchError(StoreError):
    """An existing store was made with another autoencoder/resolution/crop/dtype."""


class StoreLockedError(StoreError):
    """Another live process holds the store's write lock."""


class StoreCorruptError(StoreError):
    """A store failed verification (missing/partial shards, NaN, checksum mismatch...)."""


class AutoencoderError(LplkitError, ValueError):
    """An autoencoder that cannot be loaded or is not supported for an operation."""

    exit_code = 5


class CheckpointError(LplkitError, OSError):
    """A training checkpoint that cannot be read or written."""

    exit_code = 6


class RunLockedError(CheckpointError):
    """Another live process trains into the same run directory."""


class EvaluationError(LplkitError, RuntimeError):
    """A metric that cannot be computed (e.g. FID without Inception weights)."""

    exit_code = 7


class TrainingError(LplkitError, RuntimeError):
    """Training cannot make progress (e.g. every step of a logging window was skipped)."""

    exit_code = 8


class Preempted(LplkitError):
    """SIGTERM or SIGUSR1 (a cluster preemption) stopped a command at a safe point: `train` after
    the step in flight, with a checkpoint of it written; `encode` after the batch in flight, keeping
    every complete shard; `stats` before writing anything. Re-running the same command resumes."""

    # EX_TEMPFAIL of sysexits.h: a temporary failure, the same command may be retried
    exit_code = 75


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a command; the message says what was kept and how to resume.

    A `KeyboardInterrupt`, not an `LplkitError`, so an `except Exception` never swallows a Ctrl-C;
    the CLI prints the message and exits 130 (128 + SIGINT, what shells expect).
    """

    exit_code = 130
