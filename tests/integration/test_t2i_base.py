"""The bundled `openmoji-t2i-base`: it loads as the recorded UNetText-S, reads the bundled
openmoji-clip encoder's states (dimensions from that encoder's own config), and its record says
how it was made."""

from __future__ import annotations

import json

import torch

from lplkit.train.base import BUNDLED_BASES, base_dir, load_base


def test_bundled_t2i_base_loads_with_the_bundled_text_encoder() -> None:
    from transformers import CLIPTextConfig

    from lplkit.text.spec import bundled_path

    assert "openmoji-t2i-base" in BUNDLED_BASES
    base = load_base("openmoji-t2i-base")
    assert base.info["model"]["name"] == "UNetText-S" and base.step == 2000
    assert base.info["latent_shape"] == [4, 8, 8] and base.info["num_classes"] is None
    (enc,) = base.info["text_encoders"]
    assert (enc["name"], enc["preset"], enc["max_tokens"]) == ("openmoji-clip", "sd-clip", 16)
    clip = CLIPTextConfig.from_pretrained(bundled_path("openmoji-clip"))
    assert base.info["model"]["text"] == {
        "tokens": 16, "states_dim": clip.hidden_size, "pooled_dim": clip.hidden_size,
    }  # fmt: skip
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = {
        "states": torch.randn(2, 16, clip.hidden_size),
        "mask": torch.ones(2, 16, dtype=torch.bool),
        "pooled": torch.randn(2, clip.hidden_size),
    }
    with torch.no_grad():
        out = base.model(z, torch.tensor([500, 500]), text=text)
    assert out.shape == z.shape and torch.isfinite(out).all()
    record = json.loads((base_dir("openmoji-t2i-base") / "training.json").read_text())
    assert record["steps"] == 2000 and "pretrain.toml" in record["command"]
    assert record["config"]["model"]["name"] == "UNetText-S"
