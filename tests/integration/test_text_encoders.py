"""Text encoders cached in the store (issue #22): `lplkit encode --text-encoder` and `lplkit
encode-text` load tiny CLIP/T5 encoders from a hub cache under a temporary HF_HOME (offline) and
store, per row, what a direct transformers call gives on that row's caption."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import text_models as tm
from conftest import subprocess_env, write_hub_cache
from PIL import Image

PIPE = "lplkit-test/tiny-sd3"
T5 = "lplkit-test/tiny-t5"
MAIN = "c" * 40
T5_COMMIT = "d" * 40
RES = 16

#: file -> caption (None: no caption); "bad.png" is not an image (skipped), "long" is truncated
CAPTIONS = {
    "a.png": "a photo of a cat",
    "b.png": "a red dog on the grass",
    "c.png": None,
    "d.png": "a small green tree under the big blue sky on the grass by a red dog",
    "bad.png": "a blue cat",
    "e.png": "",
    "f.png": "a big dog",
    "g.png": "the sky",
    "h.png": "a cat on a tree",
}


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("text-hub")
    home = tmp / "hf-home"
    write_hub_cache(home, PIPE, tm.pipeline_repo(tmp), MAIN)
    write_hub_cache(home, T5, tm.t5_repo(tmp), T5_COMMIT)
    return home


def write_captioned_folder(root: Path, captions: dict[str, str | None], seed: int = 0) -> Path:
    """An imagefolder with metadata.jsonl (`file_name`, `text`)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.jsonl", "w") as f:
        for name, caption in captions.items():
            if name.startswith("bad"):
                (root / name).write_bytes(b"not an image")
            else:
                arr = rng.integers(0, 256, size=(20 + len(name), 18, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / name)
            f.write(json.dumps({"file_name": name, "text": caption}) + "\n")
    return root


def lplkit(home: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = subprocess_env(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "lplkit", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def direct(home: Path, repo: str, subfolder: str, tokenizer: str, captions: list[str], L: int,
           *, layer: str, mask_to_model: bool) -> dict[str, np.ndarray]:  # fmt: skip
    """The oracle: transformers called directly (model and tokenizer from the same hub cache),
    tokenized as diffusers' pipelines do; `truncated` from the untruncated token counts."""
    import torch
    import transformers

    cache = home / "hub"
    snapshot = next((cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
    arch = json.loads((snapshot / subfolder / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(repo, subfolder=subfolder, cache_dir=cache)
    tok_cls = json.loads((snapshot / tokenizer / "tokenizer_config.json").read_text())
    tok = getattr(transformers, tok_cls["tokenizer_class"]).from_pretrained(
        repo, subfolder=tokenizer, cache_dir=cache
    )
    t = tok(captions, padding="max_length", max_length=L, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = model.eval()(t.input_ids, attention_mask=t.attention_mask if mask_to_model else None,
                           output_hidden_states=True)  # fmt: skip
    states = out.last_hidden_state if layer == "last" else out.hidden_states[-2]
    res = {"states": states.numpy(), "mask": t.attention_mask.numpy()}
    if arch == "CLIPTextModelWithProjection":
        res["pooled"] = out.text_embeds.numpy()
    elif arch == "CLIPTextModel":
        res["pooled"] = out.pooler_output.numpy()
    res["truncated"] = np.array([len(ids) > L for ids in tok(captions)["input_ids"]])
    return res


def read_text(store: Path, name: str) -> dict[str, np.ndarray]:
    """The text arrays read with zarr directly (fp16 -> float32)."""
    import zarr

    group = zarr.open_group(str(store), mode="r")
    return {a: np.asarray(group[f"text/{name}/{a}"][:]) for a in group[f"text/{name}"].array_keys()}


def check_against_direct(home, store, name, repo, subfolder, tokenizer, L, *, layer, mask_to_model):
    import pyarrow.parquet as pq
    import zarr

    rows = pq.read_table(store / "index.parquet").to_pylist()
    manifest = zarr.open_group(str(store), mode="r").attrs["lplkit"]
    entry = manifest["text_encoders"][name]
    got = read_text(store, name)
    ok = [r["position"] for r in rows if r["status"] == "ok"]
    skipped = [r["position"] for r in rows if r["status"] != "ok"]
    # each row's caption from the source's own metadata, by key (not from the store)
    captions = [CAPTIONS[rows[p]["key"]] or "" for p in ok]
    want = direct(home, repo, subfolder, tokenizer, captions + [""], L, layer=layer,
                  mask_to_model=mask_to_model)  # fmt: skip
    for a in ("states", "pooled"):
        if a not in want:
            assert a not in got
            continue
        np.testing.assert_allclose(
            got[a][ok].astype(np.float32), want[a][:-1], atol=2e-3, rtol=2e-3
        )
        np.testing.assert_allclose(got["empty_" + a][0].astype(np.float32), want[a][-1],
                                   atol=2e-3, rtol=2e-3)  # fmt: skip
        assert not got[a][skipped].any()
    np.testing.assert_array_equal(got["mask"][ok], want["mask"][:-1])
    np.testing.assert_array_equal(got["empty_mask"][0], want["mask"][-1])
    assert not got["mask"][skipped].any()
    assert entry["counts"] == {
        "ok": len(ok),
        "skipped": len(skipped),
        "truncated": int(want["truncated"][:-1].sum()),
        "empty": sum(1 for c in captions if not c),
    }
    return entry


def test_encode_with_clip_then_encode_text_t5_equal_transformers(hub_home, tmp_path, tiny_vae_dir):
    """The issue's flow: `encode --text-encoder ORG/NAME:text_encoder_2` on an imagefolder with
    metadata (a bad image skipped, a caption missing, one empty, one truncated), then `encode-text
    STORE --text-encoder ORG/T5`; every row equals a direct transformers call on its caption."""
    images = write_captioned_folder(tmp_path / "img", CAPTIONS)
    store = tmp_path / "s.zarr"
    r = lplkit(hub_home, "encode", "--dataset", str(images), "--res", str(RES), "--vae",
               str(tiny_vae_dir), "--out", str(store), "--shard-size", "4", "--workers", "0",
               "--device", "cpu", "--text-encoder", f"{PIPE}:text_encoder_2",
               "--text-max-tokens", "8", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["text"][0]["name"] == "text_encoder_2" and summary["text"][0]["completed"]
    entry = check_against_direct(hub_home, store, "text_encoder_2", PIPE, "text_encoder_2",
                                 "tokenizer_2", 8, layer="penultimate",
                                 mask_to_model=False)  # fmt: skip
    assert entry["revision"] == MAIN and entry["class"] == "CLIPTextModelWithProjection"
    assert entry["counts"]["truncated"] >= 1 and entry["counts"]["empty"] == 2

    r = lplkit(hub_home, "encode-text", str(store), "--text-encoder", T5,
               "--text-max-tokens", "10", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    entry = check_against_direct(hub_home, store, "tiny-t5", T5, "", "", 10, layer="last",
                                 mask_to_model=True)  # fmt: skip
    assert entry["revision"] == T5_COMMIT and entry["pooled_size"] is None

    # the same name with another model is refused in one line; --name stores a second one
    r = lplkit(hub_home, "encode-text", str(store), "--text-encoder", f"{PIPE}:text_encoder",
               "--name", "tiny-t5")  # fmt: skip
    assert r.returncode != 0 and "already caches text encoder 'tiny-t5'" in r.stderr
    assert "pass --name" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    r = lplkit(hub_home, "verify", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    r = lplkit(hub_home, "info", str(store), "--json")
    info = json.loads(r.stdout)["text_encoders"]
    assert info["tiny-t5"]["bytes_per_row"] == 10 * 16 * 2 + 10
    assert info["text_encoder_2"]["bytes_per_row"] == 8 * 16 * 2 + 8 + 8 * 2
