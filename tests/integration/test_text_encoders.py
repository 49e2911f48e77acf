"""Text encoders cached in the store (issue #22): `lplkit encode --text-encoder` and `lplkit
encode-text` load tiny CLIP/T5 encoders from a hub cache under a temporary HF_HOME (offline) and
store, per row, what a direct transformers call gives on that row's caption."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import helpers.text_models as tm
import numpy as np
import pytest
from helpers.cli import subprocess_env
from helpers.hub_cache import write_hub_cache
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
    want = direct(home, repo, subfolder, tokenizer, [*captions, ""], L, layer=layer,
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

    # in-process from here (the hub was needed only to load): verify and info see both encoders
    from lplkit.store import verify_store
    from lplkit.store.inspect import store_info

    assert verify_store(str(store)).ok
    info = store_info(str(store))["text_encoders"]
    assert info["tiny-t5"]["bytes_per_row"] == 10 * 16 * 2 + 10
    assert info["text_encoder_2"]["bytes_per_row"] == 8 * 16 * 2 + 8 + 8 * 2


def test_same_name_with_another_model_is_refused_in_one_line(tmp_path, tiny_vae_dir, capsys):
    from helpers.cli import run_cli

    images = write_captioned_folder(tmp_path / "img", dict(list(CAPTIONS.items())[:3]))
    store = tmp_path / "s.zarr"
    for seed in (0, 1):
        m, tok = tm.t5_model(seed)
        tm.save(m, tok, tmp_path / f"t5-{seed}")
    (tmp_path / "t5-1").rename(tmp_path / "other")
    code, _, err = run_cli(["encode", "--dataset", str(images), "--res", str(RES), "--vae",
                            str(tiny_vae_dir), "--out", str(store), "--workers", "0", "--device",
                            "cpu", "--text-encoder", str(tmp_path / "t5-0")], capsys)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(["encode-text", str(store), "--text-encoder", str(tmp_path / "other"),
                            "--name", "t5-0"], capsys)  # fmt: skip
    assert code != 0 and "already caches text encoder 't5-0' with other settings" in err
    assert "id: stored" in err
    assert "pass --name" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["encode-text", str(store), "--text-encoder", str(tmp_path / "other"),
                            "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    from lplkit.store import LatentStore

    assert set(LatentStore.open(str(store)).text_encoders) == {"t5-0", "other"}


def test_kill_during_encode_text_then_rerun_is_bitwise_an_uninterrupted_run(tmp_path, tiny_vae_dir):
    """SIGKILL `encode-text` once a text shard is complete; the same command resumes, and the text
    arrays equal, bit for bit, those of a run that was never interrupted (from a copy of the store)."""
    import shutil
    import signal
    import time

    import zarr

    from lplkit.encode import EncodeConfig, encode_dataset

    captions = {f"{c}{i}.png": f"a {c} photo of a cat {i}" for c in "xyz" for i in range(4)}
    images = write_captioned_folder(tmp_path / "img", captions)
    store = tmp_path / "s.zarr"
    encode_dataset(EncodeConfig(dataset=str(images), out=str(store), vae=str(tiny_vae_dir),
                                res=RES, shard_size=2, workers=0, device="cpu"))  # fmt: skip
    whole = tmp_path / "whole.zarr"
    shutil.copytree(store, whole)
    m, tok = tm.t5_model(7)
    t5 = tm.save(m, tok, tmp_path / "t5")
    args = ["--text-encoder", str(t5), "--text-max-tokens", "9", "--text-batch-size", "1"]
    r = lplkit(tmp_path, "encode-text", str(whole), *args)
    assert r.returncode == 0, r.stderr[-2000:]

    env = subprocess_env(HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "lplkit", "encode-text", str(store), *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    progress = store / "text" / "t5" / "progress"
    deadline = time.monotonic() + 180
    while not (progress.exists() and any(progress.iterdir())) and proc.poll() is None:
        assert time.monotonic() < deadline, "no text shard completed in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(progress.iterdir()))
    assert 1 <= done < 6, f"killed with {done}/6 shards done: not mid-run"
    assert not zarr.open_group(str(store), mode="r").attrs["lplkit"]["text_encoders"]["t5"][
        "completed"
    ]

    r = lplkit(tmp_path, "encode-text", str(store), *args, "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["shards_written"] == 6 - done  # the complete shards were kept
    a, b = read_text(store, "t5"), read_text(whole, "t5")
    assert a.keys() == b.keys() == {"states", "mask", "empty_states", "empty_mask"}
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k
    from lplkit.store import verify_store

    assert verify_store(str(store)).ok
