"""The latent store on a real S3 protocol endpoint, offline: moto's S3 server on 127.0.0.1 and s3fs.

The oracle is a local encode of the same images with the same command, read with zarr/pyarrow
directly; the S3 side is listed, read and damaged with boto3 (not through lplkit or s3fs's caches).
The endpoint reaches lplkit the documented ways (docs/store-format.md, "S3 / remote stores"):
`AWS_ENDPOINT_URL` in this process, `FSSPEC_S3` in the `python -m lplkit` subprocess.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from helpers.cli import run_cli
from helpers.images import write_image_folder
from helpers.stores import read_store

pytest.importorskip("moto.server", reason="needs moto[s3], flask, flask-cors (in the `test` extra)")
pytest.importorskip("s3fs", reason="needs s3fs (in the `test` and `s3` extras)")
import boto3  # installed with moto
import fsspec.config
import s3fs
from moto.server import ThreadedMotoServer

BUCKET = "lplkit-test"
ENCODE = ["--res", "32", "--shard-size", "4", "--batch-size", "3", "--workers", "0",
          "--device", "cpu", "--flip"]  # fmt: skip
N, SHARDS = 12, 3
ARRAYS = ("moments", "moments_flip", "labels")
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free port of 127.0.0.1 with one bucket; this process points at it."""
    werkzeug_log = logging.getLogger("werkzeug")  # one line per request otherwise
    level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in os.environ:  # no real profile, token or endpoint may leak in
                if key.startswith(("AWS_", "FSSPEC_S3")):
                    mp.delenv(key)
            for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
                mp.setenv(key, value)
            mp.delitem(fsspec.config.conf, "s3", raising=False)
            s3fs.S3FileSystem.clear_instance_cache()
            boto3.client("s3").create_bucket(Bucket=BUCKET)
            yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
        werkzeug_log.setLevel(level)


@pytest.fixture
def s3(s3_endpoint):
    """A boto3 client on the endpoint (independent of lplkit and of s3fs)."""
    return boto3.client("s3")


@pytest.fixture
def s3_url(s3_endpoint) -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}/store.zarr"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("s3-images"), {"cat": 3, "ant": 5, "bee": 4})


@pytest.fixture(scope="module")
def local_store(images, tiny_vae_dir, tmp_path_factory) -> Path:
    """The oracle: the same encode with a local --out."""
    out = tmp_path_factory.mktemp("s3-local") / "store.zarr"
    code, _, err = run_cli(_encode_args(images, tiny_vae_dir, str(out)))
    assert code == 0, err
    return out


def _encode_args(images: Path, vae: Path, out: str) -> list[str]:
    return ["encode", "--dataset", str(images), "--vae", str(vae), "--out", out, *ENCODE, "--json"]


def _key(url: str, rel: str = "") -> str:
    """The object key of `rel` inside the store at `url` (s3://bucket/prefix)."""
    prefix = url.split("/", 3)[3]
    return f"{prefix}/{rel}" if rel else prefix


def _objects(s3, url: str) -> dict[str, int]:
    """{key relative to the store: size} of every object under the store."""
    prefix = _key(url) + "/"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix) :]: o["Size"] for p in pages for o in p.get("Contents", [])}


def _read_s3(s3, url: str) -> dict:
    group = zarr.open_group(url, mode="r")  # zarr's own FsspecStore, not lplkit's reader
    out = {name: np.asarray(group[name][:]) for name in ARRAYS}
    body = s3.get_object(Bucket=BUCKET, Key=_key(url, "index.parquet"))["Body"].read()
    out["index"] = pq.read_table(io.BytesIO(body)).to_pylist()
    out["manifest"] = dict(group.attrs["lplkit"])
    return out


def _assert_same_store(s3, url: str, local_store: Path) -> None:
    """Bitwise the same arrays, index rows and manifest as the local oracle."""
    remote, local = _read_s3(s3, url), read_store(local_store)
    for name in ARRAYS:
        assert remote[name].dtype == local[name].dtype, name
        np.testing.assert_array_equal(remote[name], local[name], err_msg=name)
    assert remote["index"] == local["index"]
    assert remote["manifest"] == local["manifest"]
    assert remote["manifest"]["completed"] is True


def _verify(url: str, capsys) -> tuple[int, list[tuple[str, int | None]], list[dict]]:
    code, out, _ = run_cli(["verify", url, "--json"], capsys)
    problems = json.loads(out)["problems"]
    return code, sorted((p["kind"], p["shard"]) for p in problems), problems


def test_cli_encode_to_s3_equals_local_encode(s3, s3_endpoint, s3_url, images, tiny_vae_dir,
                                              local_store, tmp_path, capsys):  # fmt: skip
    # The real entry point in a fresh process, pointed at the endpoint by FSSPEC_S3 only.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_"))}
    env |= CREDENTIALS | {"FSSPEC_S3": json.dumps({"endpoint_url": s3_endpoint})}
    args = [sys.executable, "-m", "lplkit", *_encode_args(images, tiny_vae_dir, s3_url)]
    proc = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["total"], summary["encoded"], summary["shards_written"]) == (N, N, SHARDS)
    assert summary["completed"] is True
    assert not (tmp_path / "s3:").exists()  # not silently written to a local folder named s3:

    objects = _objects(s3, s3_url)
    for s in range(SHARDS):
        assert f"progress/shard-{s:05d}.json" in objects
        assert f"moments/c/{s}/0/0/0/0" in objects and f"moments_flip/c/{s}/0/0/0/0" in objects
    assert ".lplkit-lock.json" not in objects  # released
    _assert_same_store(s3, s3_url, local_store)

    code, out, _ = run_cli(["verify", s3_url, "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True, out
    code, out, _ = run_cli(["info", s3_url, "--json"], capsys)
    assert code == 0, out
    info = json.loads(out)
    local_info = json.loads(run_cli(["info", str(local_store), "--json"], capsys)[1])
    assert info["counts"] == local_info["counts"] == {"total": N, "ok": N, "skipped": 0}
    assert info["shards"] == {"total": SHARDS, "complete": SHARDS}
    assert info["arrays"] == local_info["arrays"]  # shapes, dtypes and stored bytes
    assert info["bytes"]["index"] == objects["index.parquet"]

    from lplkit.store import LatentStore

    remote, local = LatentStore.open(s3_url), LatentStore.open(str(local_store))
    mean, std = remote.read(np.arange(N), flip=True)
    oracle = read_store(local_store)["moments_flip"].astype(np.float32)
    np.testing.assert_array_equal(mean, oracle[:, 0])
    np.testing.assert_array_equal(std, oracle[:, 1])
    got = list(remote.batches(4, seed=7, epoch=1))
    want = list(local.batches(4, seed=7, epoch=1))
    assert len(got) == len(want) == N // 4
    for (z, y), (z_ref, y_ref) in zip(got, want, strict=True):
        np.testing.assert_array_equal(z.numpy(), z_ref.numpy())
        np.testing.assert_array_equal(y.numpy(), y_ref.numpy())


def test_resume_on_s3_after_a_crash_equals_one_go(s3, s3_url, images, tiny_vae_dir, local_store,
                                                  monkeypatch, capsys):  # fmt: skip
    import lplkit.store.writer as writer_module

    real_write = writer_module.write_json_atomic

    def crash_at_shard_1_marker(fs, path, data):
        if path.endswith("shard-00001.json"):
            raise OSError("injected crash before the marker")
        real_write(fs, path, data)

    # 1. crash after shard 1's data is written but before its marker (shard 2, queued behind it
    #    in the writer thread, may or may not have been written by then)
    monkeypatch.setattr(writer_module, "write_json_atomic", crash_at_shard_1_marker)
    code, _, err = run_cli(_encode_args(images, tiny_vae_dir, s3_url), capsys)
    monkeypatch.undo()
    assert code != 0 and "shard 1" in err, err
    objects = _objects(s3, s3_url)
    assert "progress/shard-00000.json" in objects and "moments/c/1/0/0/0/0" in objects
    assert "index.parquet" not in objects and ".lplkit-lock.json" not in objects
    pending = [s for s in range(SHARDS) if f"progress/shard-{s:05d}.json" not in objects]
    assert pending[0] == 1, pending
    code, kinds, _ = _verify(s3_url, capsys)
    assert code == 4 and {("missing_shard", s) for s in pending} <= set(kinds), kinds
    # the unmarked shard object is torn (a half-finished upload): the rerun must replace it whole
    s3.put_object(Bucket=BUCKET, Key=_key(s3_url, "moments/c/1/0/0/0/0"), Body=b"\x00torn" * 9)

    # 2. re-run the same command: only the pending shards are written
    code, out, err = run_cli(_encode_args(images, tiny_vae_dir, s3_url), capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["shards_written"] == len(pending), summary
    assert summary["shards_already_done"] == SHARDS - len(pending), summary
    _assert_same_store(s3, s3_url, local_store)

    # 3. a shard whose marker object was deleted by hand is re-encoded alone
    s3.delete_object(Bucket=BUCKET, Key=_key(s3_url, "progress/shard-00000.json"))
    code, out, err = run_cli(_encode_args(images, tiny_vae_dir, s3_url), capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["shards_written"], summary["shards_already_done"]) == (1, 2)
    _assert_same_store(s3, s3_url, local_store)
    assert _verify(s3_url, capsys)[0] == 0


def test_verify_names_a_corrupted_shard_object_on_s3(s3, s3_url, images, tiny_vae_dir,
                                                     local_store, capsys):  # fmt: skip
    # A local store uploaded object by object (like `aws s3 sync`) is a sound S3 store.
    for path in sorted(p for p in local_store.rglob("*") if p.is_file()):
        rel = path.relative_to(local_store).as_posix()
        s3.put_object(Bucket=BUCKET, Key=_key(s3_url, rel), Body=path.read_bytes())
    assert _verify(s3_url, capsys)[0] == 0

    # swap two fp16 values inside shard 1 of `moments`: still finite, only the checksum can tell
    key = _key(s3_url, "moments/c/1/0/0/0/0")
    body = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[0:2], body[2:4] = body[2:4], body[0:2]
    assert body != bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    code, kinds, problems = _verify(s3_url, capsys)
    assert code == 4 and kinds == [("checksum", 1)], problems
    assert "moments" in problems[0]["message"] and "shard 1" in problems[0]["fix"]
    code, out, err = run_cli(["verify", s3_url], capsys)  # the human-readable form names it too
    assert code == 4 and "shard 1" in " ".join((out + err).split()), out + err

    # a deleted shard object is missing data, not silently zeros
    s3.delete_object(Bucket=BUCKET, Key=_key(s3_url, "moments/c/2/0/0/0/0"))
    code, kinds, _ = _verify(s3_url, capsys)
    assert code == 4 and kinds == [("checksum", 1), ("checksum", 2), ("missing_data", 2)], kinds

    # --repair on S3, then the same encode command restores exactly the oracle
    code, _, err = run_cli(["verify", s3_url, "--repair"], capsys)
    assert code != 0, err
    objects = _objects(s3, s3_url)
    assert "progress/shard-00001.json" not in objects and "progress/shard-00002.json" not in objects
    code, out, err = run_cli(_encode_args(images, tiny_vae_dir, s3_url), capsys)
    assert code == 0, err
    assert json.loads(out)["shards_written"] == 2
    _assert_same_store(s3, s3_url, local_store)
    assert _verify(s3_url, capsys)[0] == 0


def test_second_writer_is_refused_by_the_lock_object(s3, s3_url, images, tiny_vae_dir, capsys):
    """The lock is an exclusive create (a conditional put, If-None-Match) of one object."""
    from lplkit.store.lock import StoreLock
    from lplkit.store.sidecar import url_to_fs

    holder = StoreLock(*url_to_fs(s3_url))
    owner = holder.acquire()
    try:
        lock = s3.get_object(Bucket=BUCKET, Key=_key(s3_url, ".lplkit-lock.json"))["Body"].read()
        assert json.loads(lock)["token"] == owner.token
        code, _, err = run_cli(_encode_args(images, tiny_vae_dir, s3_url), capsys)
        assert code != 0 and "locked by a running writer" in err and f"pid {owner.pid}" in err, err
        assert set(_objects(s3, s3_url)) == {".lplkit-lock.json"}  # nothing else was written
    finally:
        holder.release()
    assert _objects(s3, s3_url) == {}
