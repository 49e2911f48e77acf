"""Hugging Face hub failures -> one actionable line (what failed, and what to do about it).

Used by the autoencoder loader (`--vae ORG/NAME`) and the hub dataset sources (`--dataset ORG/NAME`,
presets). `huggingface_hub` is imported lazily so importing this module stays light.
"""

from __future__ import annotations

import os

__all__ = ["hub_cache_dir", "hub_failure", "is_offline"]


def is_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` is set (read now, so a test or a caller may set it late)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> str:
    """The hub cache `huggingface_hub` reads (honours HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _local_hint(kind: str) -> str:
    if kind == "model":
        return "or pass --vae a local diffusers directory"
    return (
        "or point --dataset at a local copy (image folder, parquet, save_to_disk dir, wds: shards)"
    )


def _is_network_error(exc: BaseException) -> bool:
    """No answer from the hub: DNS, refused or reset connections, timeouts (httpx or requests)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    for cls in type(exc).__mro__:
        root = cls.__module__.split(".")[0]
        if root.startswith(("httpx", "httpcore", "requests", "urllib3")) and (
            "Connect" in cls.__name__ or "Timeout" in cls.__name__ or "Network" in cls.__name__
        ):
            return True
    return False


def hub_failure(exc: BaseException, *, repo: str, kind: str, revision: str | None = None) -> str:
    """One line saying why `repo` (a `kind` = "model" or "dataset" repo) could not be read and what to
    do; `exc` is the exception `huggingface_hub` or `datasets` raised."""
    from huggingface_hub import errors

    local = _local_hint(kind)
    page = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo}"
    text = " ".join(str(exc).split())
    if isinstance(exc, errors.GatedRepoError) or "gated" in text.lower():
        return (
            f"{repo} is gated: accept its terms at {page} and log in (`hf auth login`) or set "
            f"HF_TOKEN; HF_HUB_OFFLINE=1 uses a copy already in the cache; {local}"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return f"{repo} has no revision {revision!r} on the hub; pass an existing branch, tag or commit"
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (
            f"{repo}: no such {kind} repository on the hub (or it is private: log in with "
            f"`hf auth login` or set HF_TOKEN); {local}"
        )
    offline = is_offline() or isinstance(
        exc, errors.OfflineModeIsEnabled | errors.LocalEntryNotFoundError
    )
    rev = f" at revision {revision!r}" if revision else ""
    get = f"`hf download {'--repo-type dataset ' if kind == 'dataset' else ''}{repo}`"
    if _is_network_error(exc) and not is_offline():
        return (
            f"the hub cannot be reached for {repo}{rev} ({text[:120]}): set HF_HUB_OFFLINE=1 to "
            f"use a copy in the local hub cache ({hub_cache_dir()}), {local}"
        )
    if offline or "couldn't reach" in text.lower():
        why = "HF_HUB_OFFLINE=1" if is_offline() else "the hub cannot be reached"
        return (
            f"{repo}{rev} is not in the local hub cache ({hub_cache_dir()}) and {why}: download "
            f"it once with network access ({get}), set HF_HOME to the cache that holds it, {local}"
        )
    if isinstance(exc, errors.EntryNotFoundError):
        return f"{repo}: {text}"
    return f"cannot read {repo} from the hub: {type(exc).__name__}: {text[:300]}"
