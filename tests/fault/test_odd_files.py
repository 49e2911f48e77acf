"""Odd entries in an image folder (issue #16 item 5): a dangling symlink, a symlink loop, a FIFO named
like an image and a file name that is not valid UTF-8 each become a row (skipped with its reason, or
encoded under a reversible key) instead of aborting or hanging the encode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.cli import subprocess_env
from helpers.stores import read_store
from PIL import Image

from lplkit.data import resolve_source
from lplkit.data.folder import key_of, path_bytes_of_key

NON_UTF8 = b"caf\xe9.png"  # latin-1 bytes: not valid UTF-8


def _odd_folder(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "z.png"):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / name)
    (root / "gone.png").symlink_to(root / "missing.png")  # dangling
    (root / "loop.png").symlink_to("loop.png")  # ELOOP
    os.mkfifo(root / "pipe.jpg")  # opening it for reading would wait for a writer forever
    fd = os.open(os.fsencode(root) + b"/" + NON_UTF8, os.O_WRONLY | os.O_CREAT, 0o644)
    with os.fdopen(fd, "wb") as f:
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(f, format="PNG")
    return root


def _make(root: Path, kind: str) -> tuple[str, str | None]:
    """One odd entry in `root`: (its key, the expected skip reason or None when it encodes)."""
    if kind == "dangling":
        (root / "gone.png").symlink_to(root / "missing.png")
        return "gone.png", "missing file"
    if kind == "loop":
        (root / "loop.png").symlink_to("loop.png")
        return "loop.png", "Too many levels of symbolic links"
    if kind == "fifo":
        os.mkfifo(root / "pipe.jpg")
        return "pipe.jpg", "not a regular file (a FIFO)"
    fd = os.open(os.fsencode(root) + b"/" + NON_UTF8, os.O_WRONLY | os.O_CREAT, 0o644)
    with os.fdopen(fd, "wb") as f:
        Image.new("RGB", (20, 20)).save(f, format="PNG")
    return "caf%E9.png", None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
@pytest.mark.parametrize("kind", ["dangling", "loop", "fifo", "non_utf8"])
def test_each_odd_entry_is_listed_and_opens_or_fails_with_a_reason(kind, tmp_path):
    import threading

    from lplkit.data.sources import open_image
    from lplkit.errors import BadImageError

    root = tmp_path / "odd"
    root.mkdir()
    Image.new("RGB", (20, 20)).save(root / "a.png")
    key, reason = _make(root, kind)
    src = resolve_source(str(root))  # used to raise while listing (stat, key encoding)
    records = {src[i].key: src[i] for i in range(len(src))}
    assert sorted(records) == sorted(["a.png", key])
    outcome: list = []

    def _open() -> None:
        try:
            outcome.append(open_image(records[key]).size)
        except BadImageError as exc:
            outcome.append(str(exc))

    t = threading.Thread(target=_open, daemon=True)
    t.start()
    t.join(60)
    if t.is_alive():  # blocked in open() on the FIFO: release it, then fail
        os.close(os.open(root / "pipe.jpg", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("opening the FIFO blocked")
    if reason is None:
        assert outcome == [(20, 20)]
    else:
        assert reason in outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_encode_skips_odd_entries_with_reasons(tmp_path, tiny_vae_dir):
    root = _odd_folder(tmp_path / "odd")
    out = tmp_path / "s.zarr"
    args = [sys.executable, "-m", "lplkit", "encode", "--dataset", str(root), "--res", "16",
            "--vae", str(tiny_vae_dir), "--out", str(out), "--workers", "0", "--device", "cpu"]  # fmt: skip
    try:  # the FIFO used to block this forever
        res = subprocess.run(args, env=subprocess_env(), capture_output=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("encode hung on the FIFO")
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    rows = {r["key"]: r for r in read_store(out)["index"]}
    assert {k for k, r in rows.items() if r["status"] == "ok"} == {"a.png", "caf%E9.png", "z.png"}
    assert rows["gone.png"]["reason"].startswith("missing file")
    assert "Too many levels of symbolic links" in rows["loop.png"]["reason"]
    assert "not a regular file (a FIFO)" in rows["pipe.jpg"]["reason"]
    assert path_bytes_of_key("caf%E9.png") == NON_UTF8
    assert not (out / ".lplkit-lock.json").exists()


def test_keys_of_undecodable_names_are_reversible():
    for raw in (NON_UTF8, b"d\xff/\xfe\xfd.jpg", b"100%.png", "ok/naïve.png".encode()):
        key = key_of(os.fsdecode(raw))
        key.encode("utf-8")
        assert path_bytes_of_key(key) == raw, (raw, key)
    assert key_of("ok/naïve.png") == "ok/naïve.png"  # valid UTF-8 names keep their key


def test_preparing_folder_images_leaves_no_file_open(tmp_path):
    """Every decoded image's file is closed when it is prepared: PIL never closes a file object it
    was handed, so each one stayed open until garbage collection (a ResourceWarning per image, and
    descriptors held by a worker between collections)."""
    import gc
    import warnings

    from lplkit.data.prepared import PreparedSource

    root = tmp_path / "img" / "a"
    root.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((40, 48, 3), 40 * i, np.uint8)).save(root / f"{i}.png")
    prepared = PreparedSource(resolve_source(str(tmp_path / "img")), 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert all(prepared[i].x is not None for i in range(len(prepared)))
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
