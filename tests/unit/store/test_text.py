"""Text-encoder arrays in the store (lplkit.store.text): written with the moments' geometry,
read back aligned by `read_text`, `batches(text=...)`, `LatentDataset` and `LatentBatches`, and
checked by `verify` (checksums, NaN/Inf, masks, row counts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lplkit.errors import StoreError, StoreMismatchError
from lplkit.store import LatentStore, verify_store
from lplkit.store.dataset import LatentBatches, LatentDataset
from lplkit.store.sidecar import url_to_fs
from lplkit.store.synthetic import write_synthetic_store
from lplkit.store.text import TextWriter, geometry, ok_rows

N, L, D, P = 21, 6, 5, 3
SKIPPED = {4, 13}


def entry(**kw):
    base = {"id": "org/clip", "subfolder": "text_encoder", "revision": "a" * 40,
            "class": "CLIPTextModelWithProjection", "config_hash": "h", "tokenizer": "tokenizer",
            "family": "clip", "preset": "sd3-clip", "layer": "penultimate", "pass_mask": False,
            "max_tokens": L, "hidden_size": D, "pooled_size": P, "dtype": "float16"}  # fmt: skip
    return {**base, **kw}


def fake_outputs(n: int, seed: int = 0):
    """Random states/pooled and right-padded masks (>= 1 token) for n rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, L + 1, n)
    return {
        "states": rng.standard_normal((n, L, D)).astype(np.float32),
        "mask": (np.arange(L) < lengths[:, None]).astype(np.uint8),
        "pooled": rng.standard_normal((n, P)).astype(np.float32),
    }


def write_text(url, name="clip", outputs=None, **kw):
    outputs = fake_outputs(N) if outputs is None else outputs
    fs, root = url_to_fs(str(url))
    ok, _ = ok_rows(fs, root, N)
    with TextWriter.create_or_resume(str(url), name, entry(**kw)) as w:
        w.write_empty({k: v[:1] for k, v in fake_outputs(1, seed=9).items()})
        for s in w.pending_shards():
            lo, hi = w.shard_range(s)
            w.write_shard(s, {k: v[lo:hi] for k, v in outputs.items()}, ok[lo:hi], 0, 0)
        w.finalize()
    return outputs, ok


@pytest.fixture
def store(tmp_path):
    url = tmp_path / "s.zarr"
    write_synthetic_store(url, count=N, shard_size=8, chunk_size=4, skipped=SKIPPED, flips=True)
    return url


def test_text_rows_follow_the_moments_geometry_and_read_back_exactly(store):
    import zarr

    outputs, ok = write_text(store)
    group = zarr.open_group(str(store), mode="r")
    assert geometry(group) == (8, 4)
    states = group["text/clip/states"]
    assert states.shards == (8, L, D) and states.chunks == (4, L, D) and states.dtype == np.float16
    ls = LatentStore.open(str(store))
    assert set(ls.text_encoders) == {"clip"}
    assert ls.text_encoders["clip"]["counts"] == {"ok": N - 2, "skipped": 2, "truncated": 0,
                                                  "empty": 0}  # fmt: skip
    pos = np.array([20, 0, 13, 7, 8, 3])
    got = ls.read_text(pos)["clip"]
    want_states = torch.from_numpy(outputs["states"]).half()  # the oracle: torch's fp16 rounding
    want_states[torch.from_numpy(~ok)] = 0  # skipped rows are zeros
    assert torch.equal(got["states"], want_states[pos])
    assert got["states"].dtype == torch.float16 and got["mask"].dtype == torch.bool
    want_mask = outputs["mask"].astype(bool) & ok[:, None]
    assert torch.equal(got["mask"], torch.from_numpy(want_mask[pos]))
    assert torch.equal(got["pooled"], (torch.from_numpy(outputs["pooled"]).half()
                                       * torch.from_numpy(ok)[:, None])[pos])  # fmt: skip
    np.testing.assert_array_equal(np.asarray(group["text/clip/states"][:]), want_states.numpy())


@pytest.mark.parametrize("memory_budget", [1 << 30, 2000])  # all in RAM / windows of chunks
def test_batches_and_datasets_yield_the_text_of_each_latent_row(store, memory_budget):
    import zarr

    write_text(store)
    group = zarr.open_group(str(store), mode="r")
    states = torch.from_numpy(np.asarray(group["text/clip/states"][:]))
    mask = torch.from_numpy(np.asarray(group["text/clip/mask"][:]).astype(bool))
    ls = LatentStore.open(str(store), memory_budget=memory_budget)
    plain = list(ls.batches(4, seed=3, epoch=1, with_index=True))
    with_text = list(ls.batches(4, seed=3, epoch=1, with_index=True, text=True))
    assert len(plain) == len(with_text) > 0
    for (z, y, p), (z2, y2, p2, text) in zip(plain, with_text, strict=True):
        assert (
            torch.equal(z, z2) and torch.equal(y, y2) and torch.equal(p, p2)
        )  # text changes nothing
        assert torch.equal(text["clip"]["states"], states[p])
        assert torch.equal(text["clip"]["mask"], mask[p])
    wrapped = LatentBatches(ls, 4, seed=3, text="clip", with_index=True)
    wrapped.set_epoch(1)
    batches = list(wrapped)
    for (_, _, p, _), (_, _, p2, t2) in zip(with_text, batches, strict=True):
        assert torch.equal(p, p2) and torch.equal(t2["clip"]["states"], states[p])
    ds = LatentDataset(ls, text=["clip"])
    item = ds[3]
    assert torch.equal(item["text"]["clip"]["states"], states[item["position"]])
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    for batch in loader:
        assert torch.equal(batch["text"]["clip"]["states"], states[batch["position"]])
        assert torch.equal(batch["text"]["clip"]["mask"], mask[batch["position"]])


def test_unknown_text_name_and_mismatched_reencode_are_refused(store):
    write_text(store)
    ls = LatentStore.open(str(store))
    with pytest.raises(StoreError, match=r"no completed text encoder .t5.*cached: clip"):
        list(ls.batches(4, seed=0, text="t5"))
    with pytest.raises(StoreMismatchError, match=r"revision: stored 'a+', requested 'b+'.*--name"):
        TextWriter.create_or_resume(str(store), "clip", entry(revision="b" * 40))
    write_text(store, name="clip-b", revision="b" * 40)  # a second name is fine
    assert set(LatentStore.open(str(store)).text_encoders) == {"clip", "clip-b"}


def test_verify_finds_a_flipped_byte_in_a_text_shard(store):
    write_text(store)
    assert verify_store(str(store)).ok
    shard = store / "text/clip/states/c/1/0/0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = verify_store(str(store)).problems
    assert [(p.kind, "shard 1" in p.message, "'states'" in p.message) for p in problems] == [
        ("checksum", True, True)
    ]
    assert "encode-text" in problems[0].fix


def test_verify_checks_masks_nan_and_row_counts(store, tmp_path):
    outputs = fake_outputs(N)
    outputs["mask"][2] = [1, 0, 1, 0, 0, 0]  # not a right-padded mask
    outputs["states"][9, 0, 0] = np.nan  # only caught by verify: the writer refuses NaN...
    with pytest.raises(StoreError, match=r"non-finite states at positions \[9\]"):
        write_text(store, outputs=outputs)
    outputs["states"][9, 0, 0] = 0
    write_text(store, name="m", outputs=outputs)
    kinds = {(p.kind, p.message.split(": ", 1)[1][:40]) for p in verify_store(str(store)).problems}
    assert ("text_mask", "shard 0: inconsistent attention mask at ") in kinds
    problems = verify_store(str(store)).problems
    assert any("positions [2]" in p.message for p in problems)


def test_check_compatible_is_what_encode_checks_before_writing(store):
    from lplkit.store.format import read_manifest
    from lplkit.store.text import check_compatible

    check_compatible(str(store), None, "clip", entry())  # no store yet: nothing to compare
    write_text(store)
    manifest = read_manifest(str(store))
    check_compatible(str(store), manifest, "clip", entry())  # the same encoder resumes
    check_compatible(str(store), manifest, "other", entry(layer="last"))  # another name is free
    with pytest.raises(
        StoreMismatchError, match=r"'clip'.*layer: stored 'penultimate', requested 'last'"
    ):
        check_compatible(str(store), manifest, "clip", entry(layer="last"))
