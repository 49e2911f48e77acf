"""A hub cache written offline, laid out as huggingface_hub lays out a download."""

from __future__ import annotations

import os
from pathlib import Path


def write_hub_cache(hf_home: Path, repo: str, files: dict[str, bytes], commit: str,
                    *, kind: str = "model", ref: str | None = "main") -> Path:  # fmt: skip
    """Put `files` (repo-relative path -> bytes) into the hub cache under `hf_home` as
    `huggingface_hub` lays it out after a download: blobs/<sha256>, snapshots/<commit>/<path> as
    relative symlinks to the blobs, refs/<ref> = commit. Returns the snapshot directory. The layout
    is checked with `huggingface_hub.scan_cache_dir` (the library's own cache reader)."""
    import hashlib

    from huggingface_hub import scan_cache_dir

    cache = hf_home / "hub"
    repo_dir = cache / f"{kind}s--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    for rel, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / ref).write_text(commit)
    info = scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    repos = {r.repo_id: r for r in info.repos}
    assert commit in {rev.commit_hash for rev in repos[repo].revisions}
    return snapshot
