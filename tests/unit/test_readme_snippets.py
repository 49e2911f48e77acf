"""The README's Python snippets run as written (on a small synthetic store instead of in256.zarr)."""

from __future__ import annotations

import re
from pathlib import Path

from lplkit.store.synthetic import write_synthetic_store

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet(heading: str) -> str:
    section = README.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_store_in_a_dataloader_snippet_runs(tmp_path):
    store = tmp_path / "s.zarr"
    write_synthetic_store(store, count=300, latent_shape=(4, 4, 4), shard_size=128, chunk_size=16)
    code = _snippet("Using the store from your own loop").replace('"in256.zarr"', repr(str(store)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["batch"]["latent"].shape == (64, 4, 4, 4)
    assert scope["latents"].shape == (256, 4, 4, 4) and len(scope["captions"]) == 256
