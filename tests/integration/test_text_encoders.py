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
    """The oracle: transformers called directly, tokenized as diffusers' pipelines do."""
    import torch
    import transformers

    cache = home / "hub"
    model = transformers.AutoModel if subfolder == "" else None
    cfg = json.loads((cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir()
                     .__next__().joinpath(subfolder, "config.json").read_text())  # fmt: skip
    cls = getattr(transformers, cfg["architectures"][0].replace("T5EncoderModel", "T5EncoderModel"))
    del model
    m = cls.from_pretrained(repo, subfolder=subfolder, cache_dir=cache).eval()
    tok = transformers.AutoTokenizer.from_pretrained(repo, subfolder=tokenizer, cache_dir=cache)
    t = tok(captions, padding="max_length", max_length=L, truncation=True, return_tensors="pt")
    with torch.no_grad():
        out = m(t.input_ids, attention_mask=t.attention_mask if mask_to_model else None,
                output_hidden_states=True)  # fmt: skip
    states = out.last_hidden_state if layer == "last" else out.hidden_states[-2]
    res = {"states": states.numpy(), "mask": t.attention_mask.numpy()}
    if hasattr(out, "text_embeds"):
        res["pooled"] = out.text_embeds.numpy()
    elif hasattr(out, "pooler_output") and out.pooler_output is not None:
        res["pooled"] = out.pooler_output.numpy()
    return res
